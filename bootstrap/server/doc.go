// Package server is the bootstrap service's HTTP server: it serves a
// bootstrap store (package bootstrap/store) to consumers that are new or
// have fallen behind the relays, with the API of docs/BOOTSTRAP.md:
// /v1/info, /v1/schemas, /v1/snapshot, /v1/catchup, POST /v1/seed,
// /healthz, /metrics and a status page at /.
//
// # What the server guarantees
//
//   - A snapshot page holds the live rows of the snapshot at the
//     checkpoint's bootstrap.startScn, in the store's stable (source, key)
//     order, strictly after the checkpoint's bootstrap.after token.
//     Paging with each page's X-Databus-Snapshot-After token visits every
//     row unchanged during the paging exactly once; a row changed during
//     the paging has an SCN above startScn, and its change is in the log
//     that catch-up serves. The last page's token is the cursor of its last
//     row, so a consumer resuming from it gets an empty page with
//     X-Databus-Snapshot-Done: true rather than the snapshot again.
//   - A catch-up page holds whole windows with SCN in (scn, targetScn],
//     oldest first, filtered as the relay filters (data frames only; end of
//     window and schema-change frames always pass), at least one window
//     when any is in range.
//   - No mixing of histories: a checkpoint that names another store, or an
//     SCN beyond this store's head, gets 409 foreign_checkpoint. A snapshot
//     whose startScn is below the log's low watermark, and a catch-up whose
//     windows the log no longer holds, get 410 scn_not_held with the low
//     watermark: the consumer starts a new snapshot, it never gets a gap.
//   - Every bad input gets a 4xx JSON error with a stable code naming the
//     parameter (see docs/BOOTSTRAP.md); a failing store gets 503
//     unavailable, which clients retry.
//
// The server is stateless between requests: each page is one or two store
// calls (State, then Snapshot or Log), so any number of servers may serve
// one shared store (package pgstore), and a consumer may move between them
// while it pages. The page's frames are written straight from the buffer
// the store filled, which is recycled across requests; a response holds at
// most one page (maxBytes, or one row or window larger than that) in
// memory.
//
// The snapshot's `after` token is opaque to clients: see token.go for its
// layout (version byte, source id, key, CRC-32C, base64url).
package server
