/** An in-memory PoolClient that records calls; for kme-api unit tests only. */
import type { PoolClient, PoolOp, PoolOps } from '../../src/ipc/pool-protocol.js';

export interface RecordedCall {
  op: PoolOp;
  args: unknown;
}

export type FakeAnswer = (op: PoolOp, args: unknown) => unknown;

export class FakePool implements PoolClient {
  readonly calls: RecordedCall[] = [];
  answer: FakeAnswer;

  constructor(answer?: FakeAnswer) {
    this.answer = answer ?? defaultAnswer;
  }

  async call<O extends PoolOp>(op: O, args: PoolOps[O]['args']): Promise<PoolOps[O]['result']> {
    this.calls.push({ op, args });
    return (await this.answer(op, args)) as PoolOps[O]['result'];
  }

  async close(): Promise<void> {}
}

export const KEY_A = { key_ID: '550e8400-e29b-41d4-a716-446655440000', key: 'AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=' };

export function defaultAnswer(op: PoolOp, args: unknown): unknown {
  const a = args as { caller: string; slave?: string; number?: number };
  switch (op) {
    case 'status':
      return {
        source_KME_ID: 'KME_A',
        target_KME_ID: 'KME_B',
        master_SAE_ID: a.caller,
        slave_SAE_ID: a.slave,
        key_size: 256,
        stored_key_count: 25000,
        max_key_count: 100000,
        max_key_per_request: 128,
        max_key_size: 8192,
        min_key_size: 64,
        max_SAE_ID_count: 4,
      };
    case 'enc_keys':
    case 'dec_keys':
      return { keys: [KEY_A] };
    case 'whoami':
      return { registered: true };
    default:
      return {};
  }
}
