// Package client is the library a consumer embeds to follow a databus
// stream: it pulls committed source transactions ("windows") from one or
// more relays and hands them, whole and in order, to the application's
// Handler, checkpointing its position as it goes.
//
//	h := client.EventHandler(func(ctx context.Context, e *client.Event) error {
//		row, err := e.Row() // decoded with the schema version e was written with
//		if err != nil {
//			return err
//		}
//		return index.Put(ctx, e.Source, e.Key, row)
//	})
//	c, err := client.New([]string{"http://relay-1:8080", "http://relay-2:8080"}, h,
//		client.WithCheckpointStore(client.NewFileStore("/var/lib/app/databus.cp")),
//		client.WithSources("shop.orders"),
//	)
//	if err != nil {
//		return err // a bad option: New names it
//	}
//	err = c.Run(ctx) // blocks until ctx ends or a fatal error
//
// # Guarantees
//
//  1. Order. Windows reach the handler in strictly increasing SCN order;
//     events inside a window are in the order the source committed them.
//  2. Atomic windows. OnWindow always receives a whole window: every event
//     of one source transaction that passed the filters. The checkpoint only
//     ever names a window the handler finished: never one it is inside,
//     never one it failed.
//  3. At least once, by window. A window whose delivery fails (OnWindow
//     returns an error, or overruns its budget) is followed by OnRollback
//     and delivered again, whole. After a crash the consumer resumes after
//     the last saved checkpoint, so the windows processed since (at most
//     WithCheckpointEvery of them) are delivered again. Nothing is skipped:
//     the only way past a window is its successful delivery.
//  4. Schemas. Every event decodes (Row, BeforeRow, Decode) with the schema
//     version it was written with, fetched from the relay or announced by a
//     schema-change frame in the stream before the first event that uses it.
//
// Windows with no events for this consumer (heartbeats of an idle source,
// transactions the filters removed entirely) advance the checkpoint without
// a handler call, unless WithEmptyWindows asks for them.
//
// # The handler's duties
//
//  1. Make processing idempotent, or deduplicate by SCN: a window can be
//     delivered more than once (guarantee 3). A window's SCN is a natural
//     version number for the rows it touches.
//  2. On OnRollback, discard whatever was done for the failed window (or
//     rely on duty 1): the same window comes again, from its first event.
//  3. Honour ctx: it is cancelled when the callback budget
//     (WithCallbackTimeout) runs out or Run stops. The client never runs two
//     callbacks at once, so it waits for a handler that ignores ctx; such a
//     delivery still counts as failed when it returns late.
//  4. Do not modify the Window or its events: a failed window is delivered
//     again as the same value. Event byte slices may be kept after the call.
//  5. Return an error only for failures that another attempt may fix. A
//     window that fails WithRetry's number of times stops Run with a
//     *HandlerError; fix the cause and run again: the window is replayed.
//
// Optional interfaces, found by type assertion on the Handler:
// SchemaChangeHandler hears about new schema versions.
//
// Schema changes and DDL signals arrive in Window.Changes, each placed among
// the window's events. A handler that materialises rows must apply a change
// with Truncate (or Drop) at its place, deleting every row it holds for that
// source: TRUNCATE leaves no row events in the source's log. A window that
// carries such a change is always handed to OnWindow, even without events.
//
// # What is retried
//
// Pulling: a connection error, a timeout, a 5xx or 429 status, a corrupt or
// truncated response, windows out of order, a schema the relay cannot
// produce — each makes the client back off (exponentially, with jitter, see
// WithRelayRetry) and pull from the next relay, from the same checkpoint:
// SCNs come from the source's log, so any relay capturing the same source
// continues the same stream. Whole windows that arrived before a failure in
// a response are kept. By default pulling is retried until ctx ends.
//
// Not retried: a relay's refusal of the request itself (400: unknown
// source, bad partition, bad parameter; any other 4xx) returns a
// *RelayError; "scn not held" (410) from every relay returns an
// *SCNNotHeldError: the consumer has fallen behind what the relays keep and
// needs a bootstrap, or a newer start checkpoint if skipping is acceptable.
//
// The handler: see guarantee 3 and WithRetry. Checkpoint saves: a failed
// Save is logged, counted (Stats.SaveErrors) and tried again after the next
// window; it never blocks delivery. A failed save on Run's way out is
// returned.
//
// # Memory
//
// A relay response holds at least one whole window, whatever WithMaxBytes
// says, and the client reads each response whole before it decodes it: a
// window is handed to the handler whole, so it is in memory whole. A
// consumer therefore needs memory for its largest window, about twice its
// encoded size (the response body, which events alias, plus the decoded
// events): a transaction of a million narrow rows is some 80 MB on the
// wire and 200-250 MB in the consumer. Up to WithBufferWindows windows
// are read ahead of the handler. No limit of the client refuses a large
// response: the request timeout (WithRequestTimeout) bounds the wait for
// the response to start and each pause in its body, not its whole
// transfer.
//
// # Concurrency
//
// Run starts one goroutine, which fetches up to WithBufferWindows windows
// ahead of the handler over keep-alive connections, and delivers on the
// goroutine that called it. Every goroutine it starts has ended when it
// returns. Checkpoint and Stats may be called from any goroutine.
package client
