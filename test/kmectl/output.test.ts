import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { EXIT, KmectlError, Ui, bitRate, table, visibleLength } from '../../src/kmectl/output.js';

function sink(tty: boolean) {
  let text = '';
  const s = new Writable({
    write(chunk, _enc, cb) {
      text += String(chunk);
      cb();
    },
  }) as Writable & { isTTY?: boolean };
  s.isTTY = tty;
  return { s, text: () => text };
}

function ui(tty: boolean, env: NodeJS.ProcessEnv = {}, json = false) {
  const out = sink(tty);
  const err = sink(false);
  return { ui: new Ui({ stdout: out.s, stderr: err.s, env }, json), out: out.text, err: err.text };
}

describe('kmectl output', () => {
  it('colours only on a terminal, and never with NO_COLOR or TERM=dumb', () => {
    expect(ui(true).ui.level('warn')).toBe('\x1b[33mWARN\x1b[39m');
    expect(ui(false).ui.level('warn')).toBe('WARN');
    expect(ui(true, { NO_COLOR: '1' }).ui.level('fail')).toBe('FAIL');
    expect(ui(true, { TERM: 'dumb' }).ui.level('ok')).toBe('OK');
  });

  it('aligns table columns by visible width, numbers to the right', () => {
    const t = ui(true).ui;
    const lines = table([['NAME', 'N', 'NOTE'], [t.level('ok', 'a'), '10', 'x'], ['bbb', '2', 'long note']], [1]);
    expect(lines.map(visibleLength)).toEqual([14, 11, 19]);
    expect(lines[2]).toBe('bbb    2  long note');
    expect(lines[1]!.replace(/\x1b\[[0-9;]*m/g, '')).toBe('a     10  x');
  });

  it('draws a progress bar on a terminal only; elsewhere one final line', () => {
    const t = ui(true);
    const bar = t.ui.progress('re-encrypting');
    bar.update(5, 10);
    bar.end(10, 10, 'done');
    expect(t.out()).toContain('\rre-encrypting [###############...............]  50%  5/10');
    expect(t.out()).toMatch(/100%  10\/10\x1b\[K  done\n$/);
    const p = ui(false);
    const bar2 = p.ui.progress('re-encrypting');
    bar2.update(5, 10);
    bar2.end(10, 10, 'done');
    expect(p.out()).toBe('re-encrypting: 10/10  done\n');
  });

  it('--json: human lines are dropped, an error is one JSON document', () => {
    const j = ui(true, {}, true);
    j.ui.line('hello');
    j.ui.progress('x').end(1, 1);
    j.ui.error(new KmectlError('keypoold down', 'start it', EXIT.UNREACHABLE, 'UNREACHABLE'));
    expect(JSON.parse(j.out())).toEqual({ ok: false, error: { code: 'UNREACHABLE', message: 'keypoold down', hint: 'start it' } });
    const h = ui(false);
    h.ui.error(new KmectlError('keypoold down', 'start it'));
    expect(h.err()).toBe('kmectl: keypoold down\n  what to do: start it\n');
    expect(h.out()).toBe('');
  });

  it('formats key rates', () => {
    expect(bitRate(4_000_000)).toBe('4.00 Mbit/s');
    expect(bitRate(999)).toBe('999 bit/s');
    expect(bitRate(0)).toBe('0 bit/s');
  });
});
