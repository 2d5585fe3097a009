/**
 * Low-watermark events: a link whose available keys (of the default size)
 * fall below the watermark raises one event, and raises the next only after
 * it has recovered above the watermark plus a margin (no event storm while
 * the level hovers around it).
 */
export interface LowWatermarkEvent {
  link: string;
  available: number;
  watermark: number;
  /** 'low' when it falls below, 'recovered' when it is back above the margin. */
  kind: 'low' | 'recovered';
}

export class LowWatermark {
  readonly #watermark: number;
  readonly #rearm: number;
  readonly #low = new Set<string>();
  readonly #onEvent: (e: LowWatermarkEvent) => void;

  constructor(watermark: number, onEvent: (e: LowWatermarkEvent) => void, margin = 0.1) {
    this.#watermark = watermark;
    this.#rearm = Math.ceil(watermark * (1 + margin));
    this.#onEvent = onEvent;
  }

  get watermark(): number {
    return this.#watermark;
  }

  isLow(link: string): boolean {
    return this.#low.has(link);
  }

  /** Look at a link's current level. */
  observe(link: string, available: number): void {
    if (!this.#low.has(link)) {
      if (available < this.#watermark) {
        this.#low.add(link);
        this.#onEvent({ link, available, watermark: this.#watermark, kind: 'low' });
      }
    } else if (available >= this.#rearm) {
      this.#low.delete(link);
      this.#onEvent({ link, available, watermark: this.#watermark, kind: 'recovered' });
    }
  }
}
