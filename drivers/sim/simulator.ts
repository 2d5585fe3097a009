/**
 * The simulated QKD link at run time: the link model, one protocol endpoint
 * and one device per module, a production timer, and the faults in force.
 * main.ts runs it as a process; tests can run it in process.
 */
import type { Logger } from '../../src/common/logger.js';
import type { SimConfig } from './config.js';
import { createDevice, type DeviceHost } from './devices.js';
import { FAULT_KINDS, isLinkFault, parseFault, parseSeconds, type FaultKind } from './faults.js';
import { LinkModel } from './link-model.js';
import { prng, seededUniform } from './material.js';
import { ModuleEndpoint } from './module-endpoint.js';

export interface SimulatorOptions {
  config: SimConfig;
  /** 32-byte link seed; copied, the caller may zero its buffer. */
  seed: Buffer;
  logger: Logger;
  now?: () => number;
  /** Builds a module's device; default from config (pty/unix/tcp). */
  deviceFactory?: (index: number, endpoint: ModuleEndpoint) => DeviceHost;
}

interface ActiveFault {
  fault: FaultKind;
  /** Module index, or undefined for a link fault. */
  module: number | undefined;
  since: number;
  until: number;
  timer: NodeJS.Timeout;
}

export interface InjectResult {
  fault: FaultKind;
  modules: string[];
  seconds: number;
  until_ms: number;
}

export class Simulator {
  readonly model: LinkModel;
  readonly endpoints: ModuleEndpoint[];
  readonly devices: DeviceHost[];
  readonly #cfg: SimConfig;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #faults = new Map<string, ActiveFault>();
  readonly #injected: Record<string, number> = Object.fromEntries(FAULT_KINDS.map((f) => [f, 0]));
  #timer: NodeJS.Timeout | undefined;
  #tickQueued = false;
  #stopped = false;

  constructor(o: SimulatorOptions) {
    const c = o.config;
    this.#cfg = c;
    this.#log = o.logger;
    this.#now = o.now ?? Date.now;
    this.model = new LinkModel({
      linkId: c.link_id,
      seed: o.seed,
      rateBps: c.rate_bps,
      blockBits: c.block_bits,
      epochMs: c.epoch_ms,
      bufferBlocks: c.buffer_blocks,
      qber: { baseline: c.qber.baseline, noise: c.qber.noise, eavesdrop: c.qber.eavesdrop, linkDown: c.qber.link_down },
      alarmSpanBlocks: c.alarm_span_blocks,
      startMs: this.#now(),
    });
    this.endpoints = c.modules.map(
      (m, i) =>
        new ModuleEndpoint({
          model: this.model,
          index: i,
          moduleId: m.module_id,
          peerModuleId: c.modules[1 - i]!.module_id,
          kmeId: m.kme_id,
          now: this.#now,
          logger: o.logger,
          random: prng(Math.floor(seededUniform(o.seed, `faults/${i}`, 0) * 2 ** 32)),
          rates: c.fault_rates,
          alarmRepeatMs: c.alarm_repeat_ms,
          onChange: () => this.kick(),
        }),
    );
    this.devices = this.endpoints.map((ep, i) =>
      o.deviceFactory ? o.deviceFactory(i, ep) : createDevice(c.modules[i]!.device, ep, o.logger.child({ module: c.modules[i]!.module_id })),
    );
  }

  /** Plugs every device and starts producing. */
  async start(): Promise<void> {
    try {
      for (const d of this.devices) await d.start();
    } catch (e) {
      await this.stop();
      throw e;
    }
    this.#tick();
    this.#log.info(
      { link_id: this.model.linkId, first_block_id: this.model.startId, period_ms: this.model.periodMs, devices: this.devices.map((d) => d.where) },
      'simulated QKD link running',
    );
  }

  /** Runs production and sending soon (coalesced). */
  kick(): void {
    if (this.#tickQueued || this.#stopped) return;
    this.#tickQueued = true;
    setImmediate(() => {
      this.#tickQueued = false;
      this.#tick();
    });
  }

  /**
   * Injects `fault` for `seconds`. Module faults hit the named module (module_id
   * or index) or every module. The same fault again extends it.
   */
  inject(faultName: string, secondsIn: number | string, module?: string | number): InjectResult {
    const fault = parseFault(faultName);
    if (fault instanceof Error) throw fault;
    const seconds = parseSeconds(secondsIn);
    if (seconds instanceof Error) throw seconds;
    if (this.#stopped) throw new Error('the simulator is stopping');
    let targets: Array<number | undefined>;
    if (isLinkFault(fault)) {
      if (module !== undefined) throw new Error(`${fault} acts on the link, not on one module`);
      targets = [undefined];
    } else {
      targets = module === undefined ? this.endpoints.map((_, i) => i) : [this.#moduleIndex(module)];
    }
    const now = this.#now();
    const until = now + seconds * 1000;
    for (const m of targets) {
      const key = m === undefined ? fault : `${fault}@${m}`;
      const active = this.#faults.get(key);
      if (active) {
        if (until > active.until) {
          clearTimeout(active.timer);
          active.until = until;
          active.timer = setTimeout(() => this.#end(key), until - now);
        }
        continue;
      }
      this.#faults.set(key, { fault, module: m, since: now, until, timer: setTimeout(() => this.#end(key), until - now) });
      this.#injected[fault]!++;
      this.#log.warn({ fault, module: m === undefined ? undefined : this.endpoints[m]!.moduleId, seconds }, 'fault injected');
      this.#begin(fault, m);
    }
    this.#notifyLink();
    this.kick();
    return { fault, modules: targets.filter((m) => m !== undefined).map((m) => this.endpoints[m]!.moduleId), seconds, until_ms: until };
  }

  /** Ends every fault now. */
  clear(): number {
    const keys = [...this.#faults.keys()];
    for (const k of keys) this.#end(k);
    return keys.length;
  }

  status() {
    const now = this.#now();
    this.model.advance(now);
    return {
      link_id: this.model.linkId,
      now_ms: now,
      link: {
        up: this.model.up,
        qber: Number(this.model.qber().toFixed(6)),
        key_rate_bps: this.model.keyRateBps(),
        rate_bps: this.model.rateBps,
        block_bits: this.model.blockBits,
        buffer_blocks: this.model.bufferBlocks,
        first_block_id: this.model.startId,
        produced: this.model.nextId - this.model.startId,
        produced_up_to: this.model.producedUpTo,
        paused_by: this.model.pausedBy ?? null,
        alarms: this.model.alarms.map((a) => ({ kind: a.kind, first_block_id: a.firstBlockId, last_block_id: a.lastBlockId, qber_ppm: a.qberPpm, at_ms: a.atMs })),
      },
      faults: [...this.#faults.values()].map((f) => ({
        fault: f.fault,
        module: f.module === undefined ? null : this.endpoints[f.module]!.moduleId,
        since_ms: f.since,
        until_ms: f.until,
        remaining_s: Math.max(0, (f.until - now) / 1000),
      })),
      faults_injected: { ...this.#injected },
      modules: this.endpoints.map((ep, i) => ({
        ...ep.status(),
        acked: this.model.firstUnacked(i) - this.model.startId,
        device: this.devices[i]!.status(),
      })),
    };
  }

  /** Ends faults, unplugs every device (killing socats, removing sockets). Idempotent. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    for (const ep of this.endpoints) ep.close();
    for (const f of this.#faults.values()) clearTimeout(f.timer);
    this.#faults.clear();
    await Promise.allSettled(this.devices.map((d) => d.stop()));
  }

  #moduleIndex(m: string | number): number {
    const byId = this.endpoints.findIndex((ep) => ep.moduleId === String(m));
    if (byId >= 0) return byId;
    const n = typeof m === 'number' ? m : /^\d+$/.test(m) ? Number(m) : NaN;
    if (Number.isInteger(n) && n >= 0 && n < this.endpoints.length) return n;
    throw new Error(`no module "${m}" on link ${this.model.linkId}; modules: ${this.endpoints.map((ep) => ep.moduleId).join(', ')} (or 0, 1)`);
  }

  #begin(fault: FaultKind, m: number | undefined): void {
    const now = this.#now();
    const ep = m === undefined ? undefined : this.endpoints[m]!;
    switch (fault) {
      case 'link-down':
        this.model.setLinkDown(true, now);
        return;
      case 'eavesdrop-alarm': {
        const alarm = this.model.setEavesdropping(true, now);
        if (alarm) {
          this.#log.warn({ first_block_id: alarm.firstBlockId, last_block_id: alarm.lastBlockId, qber_ppm: alarm.qberPpm }, 'eavesdropping alarm');
          for (const e of this.endpoints) e.raiseAlarm(alarm);
        }
        return;
      }
      case 'corrupt-frames':
        ep!.corrupting = true;
        return;
      case 'drop-frames':
        ep!.dropping = true;
        return;
      case 'stall':
        ep!.stalled = true;
        return;
      case 'module-reboot':
        ep!.powerOff();
        this.devices[m!]!.dropConnection();
        this.model.setPowered(m!, false, now);
        return;
      case 'unplug':
        this.devices[m!]!.unplug().catch((e: Error) => this.#log.error({ module: ep!.moduleId, err: e.message }, 'unplug failed'));
        return;
    }
  }

  #end(key: string): void {
    const f = this.#faults.get(key);
    if (!f) return;
    clearTimeout(f.timer);
    this.#faults.delete(key);
    const now = this.#now();
    const m = f.module;
    const ep = m === undefined ? undefined : this.endpoints[m]!;
    this.#log.info({ fault: f.fault, module: ep?.moduleId }, 'fault ended');
    switch (f.fault) {
      case 'link-down':
        this.model.setLinkDown(false, now);
        break;
      case 'eavesdrop-alarm':
        this.model.setEavesdropping(false, now);
        break;
      case 'corrupt-frames':
        ep!.corrupting = false;
        break;
      case 'drop-frames':
        ep!.dropping = false;
        break;
      case 'stall':
        ep!.stalled = false;
        break;
      case 'module-reboot':
        this.model.setPowered(m!, true, now);
        ep!.powerOn();
        break;
      case 'unplug':
        if (!this.#stopped) this.#replug(m!);
        break;
    }
    this.#notifyLink();
    this.kick();
  }

  /** Modules in session tell their host when the link went up or down. */
  #notifyLink(): void {
    this.model.advance(this.#now());
    for (const ep of this.endpoints) ep.notifyLinkChange();
  }

  #replug(m: number, attempt = 0): void {
    this.devices[m]!.replug().catch((e: Error) => {
      this.#log.error({ module: this.endpoints[m]!.moduleId, err: e.message, attempt }, 'replug failed; retrying');
      const unpluggedAgain = this.#faults.has(`unplug@${m}`);
      if (!this.#stopped && !unpluggedAgain && attempt < 20) setTimeout(() => this.#replug(m, attempt + 1), 500);
    });
  }

  #tick(): void {
    if (this.#stopped) return;
    clearTimeout(this.#timer);
    const now = this.#now();
    this.model.advance(now);
    for (const ep of this.endpoints) ep.pump();
    const due = this.model.nextDueAt();
    if (due !== undefined) this.#timer = setTimeout(() => this.#tick(), Math.max(this.#cfg.tick_ms, Math.ceil(due - now)));
  }
}
