// Package bootstrap is the bootstrap service's producer and seeder: it
// follows the relays' stream as a client and keeps a bootstrap store
// (package bootstrap/store) complete, so that the bootstrap server can give
// a new or far-behind consumer a consistent snapshot and the log after it.
// docs/BOOTSTRAP.md describes the service as a whole.
//
//	p, err := bootstrap.NewProducer(cfg, st, reader, log, prometheus.DefaultRegisterer)
//	if err != nil {
//		return err // a bad Config field, named
//	}
//	err = p.Run(ctx) // until ctx ends, or an error no restart can fix
//
// # What the producer guarantees
//
//  1. No gap, no repeat. The store's head is the producer's only
//     checkpoint: every Run, and every restart inside Run, resumes after
//     State.Head, and Apply refuses (store.ErrConflict) a batch that does
//     not follow the head. A window is therefore in the store exactly once,
//     and only after every window before it. When the relays no longer hold
//     the windows after the head, Run stops with a *GapError rather than
//     skip them.
//  2. Whole windows, verbatim. Each window's frames go to the log exactly as
//     the relay served them (the producer pulls without filters), except
//     that a seeded chunk's rows may be added before the end-of-window frame,
//     whose count then includes them. Heartbeat windows are stored too, so
//     the head follows an idle source.
//  3. Atomic batches. Windows are committed in batches (group commit: up
//     to Config.MaxBatchWindows windows or Config.MaxBatchBytes bytes, what
//     is queued); a batch also carries the schema versions not stored yet and
//     the seed progress that its windows make durable. A failed Apply
//     commits nothing: the producer restarts from the head after a back-off.
//  4. The snapshot folds the stream: an insert or update stores the row's
//     new image as an insert frame (no before-image), a delete a tombstone,
//     a TRUNCATE or DROP of a table (a schema-change frame with the signal)
//     a tombstone for each of its rows, at their place in the window.
//
// # Seeding
//
// Rows that existed before the log began are copied by the seeder with the
// watermark algorithm of Netflix's DBLog (Andreakis & Papapanagiotou,
// 2020), so that the source is never locked and no transaction spans more
// than one chunk. For each chunk of a table T:
//
//  1. the chunk is registered, then a low mark L is committed into the
//     watermark table (source.ChunkReader.WriteWatermark);
//  2. the chunk is read by primary key after the run's cursor, and its rows
//     are attached to the registered chunk;
//  3. a high mark H is committed.
//
// In the stream, the producer records the key of every event of T after L.
// At the end of H's window it drops the chunk's rows whose key it recorded
// (the stream carries a version at least as new: the row changed after L,
// so after or while the chunk was read) and appends the others to H's window
// as inserts. A row of the chunk with no change between L and H has not
// changed since it was read, so it is the row as of H: appending it there is
// exactly right, and any later change follows it in the log. A TRUNCATE,
// DROP or schema change of T between L and H, a restart of the stream, an H
// without its L, or no H within SeedConfig.ChunkTimeout makes the chunk
// void; it is read again with new marks (applying a chunk twice is
// harmless). The run's progress (the cursor after the chunk) is committed in
// the same batch as the chunk's rows, so a seed resumes after the last chunk
// whose rows are durable.
//
// Marks carry the run id and a sequence number drawn by this Producer
// ("<run>:<instance>.<n>:L"), so a mark left in the stream by an earlier
// process, or a voided chunk, never matches a chunk registered now.
//
// # The caller's duties
//
//  1. Give the producer relays that capture the watermark table
//     (SeedConfig.WatermarkTable): without its marks no chunk completes
//     (the producer logs it when a chunk times out).
//  2. Run one producer per store, or accept that the producers of a shared
//     store fight over its head (each conflict restarts the loser).
//  3. Close the store and the ChunkReader after Run has returned: the
//     producer does not own them.
//
// # Concurrency
//
// Run starts the goroutines it needs (the relay client, a committer, the
// seeder, the purger) and returns after all of them have ended. Seed and
// SeedStatus may be called from any goroutine while Run runs.
package bootstrap
