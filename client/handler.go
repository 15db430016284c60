package client

import (
	"context"

	"github.com/databus-go/databus/schema"
)

// Handler is the application's side of the stream. The client calls its
// methods from one goroutine, one call at a time, so a Handler needs no
// locking of its own against the client.
type Handler interface {
	// OnWindow processes one whole window. Returning nil means the window
	// is done: the client may checkpoint after it and never delivers it
	// again (unless the application restarts from an older checkpoint).
	// Returning an error, or overrunning the time budget, makes the client
	// call OnRollback and deliver the same window again, whole, after a
	// back-off. ctx is cancelled when the budget runs out or Run is
	// stopping.
	OnWindow(ctx context.Context, w *Window) error
	// OnRollback tells the handler that the window it was given last has
	// failed and that the stream is back at the window with SCN scn (the
	// last one OnWindow succeeded on, or the start checkpoint). The handler
	// should discard whatever it did for the failed window; the next
	// OnWindow, if any, is that window again. cause is why it failed.
	OnRollback(ctx context.Context, scn uint64, cause error)
}

// SchemaChangeHandler is implemented by handlers that want to hear about new
// schema versions. OnSchemaChange is called, once per version announced in a
// window and in stream order, before OnWindow for that window and in the
// same attempt: an error fails the attempt like an OnWindow error, and a
// replayed window announces its versions again. The client has already
// registered the version: events using it decode without the handler's help.
type SchemaChangeHandler interface {
	OnSchemaChange(ctx context.Context, t schema.Table) error
}

// EventHandler adapts a per-event function to a Handler. f is called for
// each event of a window in order; the first error fails the whole window,
// which is then replayed from its first event, so f must tolerate seeing
// the events before the failing one again.
func EventHandler(f func(ctx context.Context, e *Event) error) Handler {
	return eventHandler(f)
}

type eventHandler func(ctx context.Context, e *Event) error

func (f eventHandler) OnWindow(ctx context.Context, w *Window) error {
	for _, e := range w.Events {
		if err := f(ctx, e); err != nil {
			return err
		}
	}
	return nil
}

func (eventHandler) OnRollback(context.Context, uint64, error) {}
