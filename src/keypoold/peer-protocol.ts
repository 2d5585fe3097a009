/**
 * The KME-to-KME protocol between the two keypoolds of a link: newline-
 * delimited JSON over one persistent mutual-TLS connection per link, on its
 * own port, with KME certificates. Same framing as the local pool API
 * ({"id","op","args"} -> {"id","ok","result"|"error"}); every request's args
 * carry `link`. Requests are handled in the order they arrive, which is the
 * order the owner carved them in: the peer's per-block cursor relies on it.
 * No key material ever crosses it (both ends hold the same blocks; only
 * slices are named).
 *
 *   hello         {link, erasable_below?}       -> HelloResponse (heartbeat; erasable_below as
 *                 in ReservationsRequest, so a side that sends no reservations still lets
 *                 the other erase the blocks it will never use)
 *   reservations  {link, ...ReservationsRequest} -> ReservationsResponse
 *   void          {link, rids}                  -> VoidResponse
 *   query         {link, rids}                  -> QueryResponse
 *   alarm         {link, first, last, reason}   -> {blocks, voided}: the sender's module
 *                 named blocks [first, last] compromised; discard them here too
 *   selftest      {link, ...SelftestRequest}    -> SelftestResponse: the link self-test
 *                 (selftest.ts): one key's slices and a nonce; the peer answers an HMAC
 *                 keyed with that key, erases it and voids the reservation
 */
import type { Slice } from './store.js';

export interface HelloResponse {
  kme_id: string;
  link: string;
  /** Highest block id the sender holds durably (all lower ones were stored too). */
  hw: number;
}

export interface PeerReservation {
  rid: string;
  master: string;
  slaves: string[];
  key_ids: string[];
  /** One list of slices per key, in key order. */
  slices: Slice[][];
  size: number;
  expires_at: number;
}

export interface ReservationsRequest {
  from: string;
  hw: number;
  /** Every block the sender owns with a lower id is fully carved and sent: the receiver may erase them. */
  erasable_below: number;
  reservations: PeerReservation[];
}

export type PeerRidState = 'committed' | 'voided' | 'refused' | 'unknown' | 'pending';

export interface ReservationsResponse {
  hw: number;
  results: Array<{ rid: string; state: PeerRidState; reason?: string }>;
}

export interface VoidRequest {
  rids: string[];
}
export interface VoidResponse {
  voided: string[];
}

export interface QueryRequest {
  rids: string[];
}
export interface QueryResponse {
  states: Record<string, PeerRidState>;
}

/** The link self-test: one test key, named by its slices (never its material). */
export interface SelftestRequest {
  from: string;
  rid: string;
  key_id: string;
  slices: Slice[];
  size: number;
  /** 32 random bytes, hex. */
  nonce: string;
}

/** `mac`: hex HMAC-SHA256 keyed with the test key (see selftest.ts). */
export type SelftestResponse = { state: 'ok'; mac: string } | { state: 'refused'; reason: string; mac?: undefined };

export type PeerOp = 'hello' | 'reservations' | 'void' | 'query' | 'alarm' | 'selftest';

export const MAX_PEER_LINE_BYTES = 8 * 1024 * 1024;
