/** `npx kmectl`: the package's bin entry runs the built script (npm run build makes it executable). */
import { spawnSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../helpers/demo-net.js';

describe('kmectl bin', () => {
  it('package.json names dist/scripts/kmectl.js, a node script that npx runs', () => {
    const pkg = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8'));
    expect(pkg.bin).toEqual(expect.objectContaining({ kmectl: 'dist/scripts/kmectl.js' }));
    const file = join(repoRoot, pkg.bin.kmectl);
    expect(readFileSync(file, 'utf8').split('\n')[0]).toBe('#!/usr/bin/env node');
    expect(statSync(file).mode & 0o111).not.toBe(0);
    const r = spawnSync('npx', ['--no-install', 'kmectl', '--help'], { cwd: repoRoot, encoding: 'utf8', timeout: 60_000 });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^kmectl: the field technician's tool for a QKD KME node\n/);
  });
});
