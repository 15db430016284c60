// Package relay is databus's relay server: it captures the committed
// windows of one physical source into an in-memory event buffer
// (package relay/buffer) and serves them over HTTP to any number of clients
// with server-side filters. The protocol is docs/PROTOCOL.md.
//
// # What the relay guarantees
//
//   - Whole windows, in SCN order: a response holds zero or more complete
//     windows, each ending with its end-of-window frame, with SCNs strictly
//     above the request's checkpoint. Filters drop data events only, so
//     every consumer's checkpoint advances through every window.
//   - No repeated SCN: after a source error the source is run again from the
//     position after the newest window appended; a window at or below the
//     newest SCN held is skipped (and counted), never appended twice.
//   - No silent gap: a checkpoint older than what the buffer holds gets
//     410 scn_not_held with the oldest SCN and low watermark, never a
//     partial stream. A window larger than buffer.maxSpillBytes stops
//     capture (logged, /healthz 503, databus_relay_capture_stopped 1); it is
//     never skipped, and the relay goes on serving what it holds.
//   - Bounded memory: the buffer holds at most Config.Buffer.MaxBytes in
//     memory (plus up to two encoding chunks, see Config). A window larger
//     than MaxBytes/16 is never in memory: it is spilled to a file (see
//     "Large windows") and streamed from it. Each response adds at most a
//     256 KiB write buffer and one rendered in-memory window, or, for a
//     spilled window on the filtered or JSON path, a 64 KiB read buffer and
//     one rendered frame; a slow client only keeps the windows of its own
//     response alive (a spilled one as an open file).
//   - Durability by retention (see package source): the relay keeps nothing
//     on disk but its position (and the spilled windows, a cache that a
//     restart empties); the source keeps every window after it.
//
// # Capture and persistence order
//
// The capture goroutine, on Run:
//
//  1. New has read <StateDir>/position.json (format version 1) and set the
//     buffer's start to its low watermark; schemas.json refills the schema
//     registry with every version seen before.
//  2. src.Open, retried with capped exponential backoff; the tables it
//     returns are registered.
//  3. src.Run from the persisted low watermark position. Each window: its
//     schema-change events are registered (and schemas.json rewritten),
//     its events and an end-of-window frame are encoded into one byte
//     slice (or, for a large window, into a file), and it is appended to
//     the buffer with its Position as JSON. The chunks of a window (see
//     "Large transactions" in package source) are spooled to a file as
//     they arrive, and the window is built at its final chunk; chunks
//     without their final window when Run returns are discarded.
//  4. On a retryable error (everything but a window too large for the
//     buffer, or a source breaking its contract), src.Run again from the
//     Position of the newest window appended, after a backoff of 100ms
//     doubling up to 30s and reset by progress.
//
// # Large windows
//
// A window whose frames exceed Buffer.MaxBytes/16 is written to
// <StateDir>/spill/<scn>.win, exactly the bytes a response sends (every
// frame stamped with the window's SCN, then the end-of-window frame), and
// the buffer holds the open file: it charges the window a few hundred bytes
// against Buffer.MaxBytes and its file's size against
// Buffer.MaxSpillBytes, evicting the oldest windows to stay within both. A
// window that arrives in chunks is first spooled to
// <StateDir>/spill/chunks-*.tmp with frames of SCN 0; at its final chunk it
// is copied, stamped, into memory (when small) or into its segment file
// through fixed 256 KiB buffers, never whole in memory. Evicting a spilled
// window deletes its file at once; responses already sending it read on
// through the open file (readers never open files by name, and only use
// ReadAt), which is closed when the last of them is done.
//
// /v1/stream sends a spilled window whole, like any other: on the binary
// unfiltered path its file is copied to the connection; on the filtered
// and JSON paths it is rendered frame by frame, and only as the first
// window of a response (its filtered size is known only once sent). While
// a spilled window is written, the write deadline moves with every write,
// so a slow client that keeps reading gets it, and a stalled one is cut
// after a minute.
//
// Nothing in spill/ is synced or durable: the source's log is the durable
// copy. New empties the directory (the source emits the windows again
// after a restart), and Run empties it on its way out.
//
// The release goroutine, every Config.ReleaseInterval: when the buffer's
// low watermark (the position after the newest evicted window) or the
// newest SCN moved, it FIRST writes position.json atomically (temporary
// file, fsync, rename, fsync of the directory), and only THEN calls
// src.Release with that position. A crash between the two leaves the
// source retaining more than needed, never less; the next start releases
// again. position.json also records maxScn, the newest SCN captured: after
// a restart the relay logs an error if the source does not yield windows up
// to it again within 30s, since consumers that had read them would see a
// gap.
//
// # Goroutines and locks
//
// Run owns every goroutine it starts and waits for all of them before it
// returns: the HTTP server (shut down gracefully; long polls in flight get
// 503 unavailable), the capture goroutine (the only caller of src.Open,
// src.Run and buffer.Append), the release goroutine (the only caller of
// src.Release and writer of position.json until Run's final write) and a
// housekeeping goroutine that drops the lag series of clients idle for 5
// minutes. HTTP handlers only read the buffer and the schema registry.
//
// Locks, which are never held during I/O to a client: Relay.mu (capture
// health), Relay.stateMu (position.json and Release; held across the
// Release call, which only the release goroutine and the final write
// contend for), Relay.schemaMu (registrations and schemas.json), the
// clients tracker's lock, and the buffer's and registry's internal locks,
// which are always taken last. No two of the relay's own locks are ever
// held together.
//
// # Caller's duties
//
//   - Build the source.Source and pass it to New; Run opens it and closes it
//     before returning. Run calls Open once (retrying until it succeeds);
//     the adapter's Run must reconnect by itself when called again after an
//     error.
//   - Give every relay its own Config.StateDir.
//   - Wait for Ready (or /healthz 200) before relying on /v1/sources or on
//     source names in /v1/stream: until the source is open the relay may not
//     know its tables, and answers 503 unavailable where a name is at stake.
//   - Cancel Run's context to stop; Run may be called once.
package relay
