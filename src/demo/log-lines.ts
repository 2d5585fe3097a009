/**
 * Makes child output readable in one terminal: every line gets its service's
 * name in front, and pino JSON lines are shortened to "LEVEL msg {fields}".
 */
const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
const HIDDEN = new Set(['level', 'time', 'pid', 'hostname', 'name', 'msg', 'v']);

export function formatLine(line: string): string {
  if (!line.startsWith('{')) return line;
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  if (typeof rec.level !== 'number') return line;
  const level = LEVELS[rec.level] ?? String(rec.level);
  const rest = Object.fromEntries(Object.entries(rec).filter(([k]) => !HIDDEN.has(k)));
  const extra = Object.keys(rest).length ? ` ${JSON.stringify(rest)}` : '';
  return `${level.padEnd(5)} ${typeof rec.msg === 'string' ? rec.msg : ''}${extra}`;
}

export function prefixer(names: string[]): (name: string, line: string) => string {
  const width = Math.max(0, ...names.map((n) => n.length));
  return (name, line) => `${name.padEnd(width)} | ${formatLine(line)}`;
}
