/** A small async mutex: one request on the wire at a time (the herdsman async-mutex). */

export class Mutex {
  #tail: Promise<void> = Promise.resolve();
  #held = 0;

  get locked(): boolean {
    return this.#held > 0;
  }

  async run<R>(fn: () => Promise<R>): Promise<R> {
    this.#held++;
    const prev = this.#tail;
    let release!: () => void;
    this.#tail = new Promise<void>((r) => (release = r));
    try {
      await prev;
      return await fn();
    } finally {
      this.#held--;
      release();
    }
  }
}
