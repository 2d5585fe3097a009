/**
 * The demo PKI as the daemons will use it: the ETSI API server certificate
 * with SAE client certificates (through the printed curl lines), and the KME
 * certificates on the KME-to-KME channel in both directions.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, request } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { curlExamples } from '../../src/demo/curl.js';
import { prepareDemo, type DemoDescription } from '../../src/demo/prepare.js';

const run = promisify(execFile);
let root: string;
let demo: DemoDescription;
const file = (rel: string) => readFileSync(join(root, rel));

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'kme-demo-tls-'));
  demo = await prepareDemo(root);
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** An HTTPS server with a node's cert that answers with the client's certificate CN. */
async function whoAmIServer(cert: string, key: string) {
  const srv = createServer(
    { cert: file(cert), key: file(key), ca: file(demo.ca_cert), requestCert: true, rejectUnauthorized: true },
    (req, res) => {
      const cn = (req.socket as TLSSocket).getPeerCertificate().subject?.CN;
      res.end(JSON.stringify({ cn, url: req.url }));
    },
  );
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return { srv, port: (srv.address() as AddressInfo).port };
}

describe('demo PKI over TLS', () => {
  it('the printed curl lines authenticate SAEs to the ETSI API servers', async () => {
    const servers = await Promise.all(demo.nodes.map((n) => whoAmIServer(n.api_cert, n.api_key)));
    try {
      // Point the examples at our stand-in servers.
      const local = {
        ...demo,
        nodes: demo.nodes.map((n, i) => ({ ...n, etsi_url: `https://127.0.0.1:${servers[i]!.port}` })),
      };
      const lines = curlExamples(local).filter((l) => l.startsWith('curl '));
      expect(lines).toHaveLength(3);
      const answers = [];
      for (const line of lines) {
        const { stdout } = await run('sh', ['-c', line], { cwd: root });
        answers.push(JSON.parse(stdout));
      }
      expect(answers).toEqual([
        { cn: 'SAE_A1', url: '/api/v1/keys/SAE_B1/status' },
        { cn: 'SAE_A1', url: '/api/v1/keys/SAE_B1/enc_keys?number=1&size=256' },
        { cn: 'SAE_B1', url: '/api/v1/keys/SAE_A1/dec_keys?key_ID=KEY_ID' },
      ]);
    } finally {
      for (const s of servers) s.srv.close();
    }
  });

  it('KME certificates authenticate both ends of the KME-to-KME channel, both ways', async () => {
    for (const [server, client] of [
      [demo.nodes[0]!, demo.nodes[1]!],
      [demo.nodes[1]!, demo.nodes[0]!],
    ] as const) {
      const { srv, port } = await whoAmIServer(server.kme_cert, server.kme_key);
      try {
        const body = await new Promise<{ cn: string; serverCn: string | undefined }>((resolve, reject) => {
          const req = request(
            {
              host: '127.0.0.1',
              port,
              path: '/peer',
              agent: false,
              ca: file(demo.ca_cert),
              cert: file(client.kme_cert),
              key: file(client.kme_key),
              // The peer is identified by its certificate CN = KME ID.
              checkServerIdentity: () => undefined,
            },
            (res) => {
              const serverCn = (res.socket as TLSSocket).getPeerCertificate().subject?.CN;
              let data = '';
              res.on('data', (d) => (data += d));
              res.on('end', () => resolve({ ...JSON.parse(data), serverCn }));
            },
          );
          req.on('error', reject);
          req.end();
        });
        expect(body).toMatchObject({ cn: client.kme_id, serverCn: server.kme_id });
      } finally {
        srv.close();
      }
    }
  });

  it('an SAE certificate cannot pass as a KME peer, nor the API certificate as a client', async () => {
    const { srv, port } = await whoAmIServer(demo.nodes[1]!.kme_cert, demo.nodes[1]!.kme_key);
    try {
      for (const [cert, key] of [
        [demo.nodes[0]!.saes[0]!.cert, demo.nodes[0]!.saes[0]!.key], // client cert, but CN is an SAE
        [demo.nodes[0]!.api_cert, demo.nodes[0]!.api_key], // serverAuth only
      ] as const) {
        const outcome = await new Promise<string>((resolve) => {
          const req = request(
            { host: '127.0.0.1', port, path: '/', agent: false, ca: file(demo.ca_cert), cert: file(cert), key: file(key) },
            (res) => {
              let data = '';
              res.on('data', (d) => (data += d));
              res.on('end', () => resolve(`cn=${JSON.parse(data).cn}`));
            },
          );
          req.on('error', (e) => resolve(`error ${(e as NodeJS.ErrnoException).code ?? e.message}`));
          req.end();
        });
        if (cert.includes('SAE_')) expect(outcome).toBe('cn=SAE_A1'); // TLS accepts it; the CN check is keypoold's job
        else expect(outcome).toMatch(/^error /);
      }
    } finally {
      srv.close();
    }
  });
});
