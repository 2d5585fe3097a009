/**
 * A strict reader of the Prometheus text exposition format (0.0.4), for tests:
 * every line must be a HELP/TYPE comment or a sample, else it throws naming the line.
 * NaN is taken in any case: prom-client writes `Nan`, which Prometheus's parser
 * (Go's ParseFloat) reads as NaN.
 */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
const LABEL = '[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\[\\\\"n])*"';
const COMMENT = new RegExp(`^# (?:HELP ${NAME} .*|TYPE ${NAME} (?:counter|gauge|histogram|summary|untyped))$`);
const SAMPLE = new RegExp(`^(${NAME})(\\{(?:${LABEL}(?:,${LABEL})*,?)?\\})? (NaN|Nan|[+-]Inf|[-+]?(?:\\d+\\.?\\d*|\\.\\d+)(?:[eE][-+]?\\d+)?)(?: -?\\d+)?$`);
const LABEL_G = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"/g;

export function parsePromText(text: string): Sample[] {
  const out: Sample[] = [];
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  lines.forEach((line, i) => {
    if (line === '' || COMMENT.test(line)) return;
    const m = SAMPLE.exec(line);
    if (!m) throw new Error(`line ${i + 1} is not Prometheus text: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(LABEL_G)) labels[l[1]!] = l[2]!.replace(/\\n/g, '\n').replace(/\\(["\\])/g, '$1');
    const v = m[3]!;
    out.push({ name: m[1]!, labels, value: /^nan$/i.test(v) ? NaN : v === '+Inf' ? Infinity : v === '-Inf' ? -Infinity : Number(v) });
  });
  return out;
}

/** Samples of `name` whose labels include `labels`. */
export function samples(all: Sample[], name: string, labels: Record<string, string> = {}): Sample[] {
  return all.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
}

/** The one sample of `name` with `labels` (throws if none or several). */
export function value(all: Sample[], name: string, labels: Record<string, string> = {}): number {
  const f = samples(all, name, labels);
  if (f.length !== 1) throw new Error(`${f.length} samples of ${name} ${JSON.stringify(labels)}`);
  return f[0]!.value;
}
