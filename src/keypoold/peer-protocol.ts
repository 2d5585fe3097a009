/**
 * The KME-to-KME protocol between the two keypoolds of a link, over HTTPS
 * with KME certificates on its own port. JSON bodies; no key material ever
 * crosses it (both ends hold the same blocks; only slices are named).
 *
 *   GET  /peer/v1/links/{link}/hello          -> HelloResponse
 *   POST /peer/v1/links/{link}/reservations   ReservationsRequest -> ReservationsResponse
 *   POST /peer/v1/links/{link}/void           VoidRequest -> VoidResponse
 *   POST /peer/v1/links/{link}/query          QueryRequest -> QueryResponse
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

export const MAX_PEER_BODY_BYTES = 8 * 1024 * 1024;
