package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"
)

// Sentinel errors. Errors returned by this package wrap them or are one of
// the typed errors below; test with errors.Is and errors.As.
var (
	// ErrRunning is returned by Run when another Run of the same Client
	// has not returned yet.
	ErrRunning = errors.New("databus: client is already running")
	// ErrCallbackTimeout is wrapped by the error recorded for a handler call
	// that overran its time budget (see WithCallbackTimeout).
	ErrCallbackTimeout = errors.New("databus: handler exceeded its time budget")
	// ErrProtocol is wrapped by every violation of the relay protocol the
	// client detects: a response that ends inside a window, a corrupt frame,
	// windows out of SCN order, an event whose schema the relay does not
	// list. Such errors are retried on the next relay.
	ErrProtocol = errors.New("databus: relay protocol violation")
	// ErrNoImage is returned by the row accessors of an Event that carries
	// no such image: Row of a delete, BeforeRow where the source gave no
	// before-image.
	ErrNoImage = errors.New("databus: event has no such row image")
	// ErrNotOnline is returned by Run when the checkpoint to resume from is
	// not in mode online. Resuming a bootstrap is not supported yet.
	ErrNotOnline = errors.New("databus: checkpoint is not in online mode")
)

// SCNNotHeldError is returned by Run when no relay holds the windows that
// follow the client's checkpoint any more: the client has fallen off the end
// of the relays' buffers (relay status 410, code scn_not_held, from every
// relay tried). Resuming needs a bootstrap, or a new start checkpoint at or
// after LowWatermark if losing the windows in between is acceptable.
type SCNNotHeldError struct {
	Relay string // the relay that answered last
	// Checkpoint is the SCN of the client's checkpoint: the last window it
	// processed.
	Checkpoint uint64
	// OldestSCN is the first window the relay holds; LowWatermark is the
	// oldest checkpoint SCN it can still serve.
	OldestSCN    uint64
	LowWatermark uint64
}

func (e *SCNNotHeldError) Error() string {
	return fmt.Sprintf("databus: relay %s no longer holds the windows after checkpoint scn %d (oldest window held %d, oldest servable checkpoint %d)",
		e.Relay, e.Checkpoint, e.OldestSCN, e.LowWatermark)
}

// RelayError is a relay's refusal of a request (HTTP 4xx other than
// scn_not_held): bad configuration of this client, such as an unknown source
// name or a malformed partition. It is never retried: Run returns it. Code,
// Message and Parameter come from the relay's JSON error body (see the
// relay's PROTOCOL.md); Code is empty when the body was not such JSON.
type RelayError struct {
	Relay     string
	Status    int
	Code      string
	Message   string
	Parameter string
}

func (e *RelayError) Error() string {
	s := fmt.Sprintf("databus: relay %s refused the request: %d %s", e.Relay, e.Status, http.StatusText(e.Status))
	if e.Code != "" {
		s += " (" + e.Code + ")"
	}
	if e.Parameter != "" {
		s += " parameter " + e.Parameter
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// HandlerError is returned by Run when the handler failed on the same window
// as many times as WithRetry allows. The client's checkpoint (and the last
// one persisted) is at or before the window preceding SCN: running again
// replays the failed window from its start.
type HandlerError struct {
	SCN      uint64 // the window that failed
	Attempts int
	Err      error // the last failure
}

func (e *HandlerError) Error() string {
	return fmt.Sprintf("databus: handler failed on window scn %d %d times, giving up: %v", e.SCN, e.Attempts, e.Err)
}

func (e *HandlerError) Unwrap() error { return e.Err }

// UnavailableError is returned by Run when pulling from the relays failed
// as many times in a row as WithRelayRetry allows (by default the client
// retries forever and never returns it).
type UnavailableError struct {
	Attempts int
	Err      error // the last failure
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("databus: no relay served the stream after %d attempts: %v", e.Attempts, e.Err)
}

func (e *UnavailableError) Unwrap() error { return e.Err }

// statusError is a relay response with a status this client does not
// treat as a refusal (5xx, 429, 408): retried.
type statusError struct {
	relay  string
	status int
	body   string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("databus: relay %s answered %d %s: %s", e.relay, e.status, http.StatusText(e.status), e.body)
}

// errClass is what the puller does about a failed pull.
type errClass int

const (
	classRetry    errClass = iota // back off, try the next relay
	classNotHeld                  // try the other relays, then give up with *SCNNotHeldError
	classFatal                    // give up now
	classCanceled                 // Run's context is done: stop quietly
)

// classify is the one place that decides what is retryable. Network errors,
// relay overload and protocol violations are retried on the next relay,
// because another relay (or the same one, later) can serve the same stream
// from the same checkpoint. Refusals of the request itself are not: every
// relay would refuse it again.
func classify(ctx context.Context, err error) errClass {
	var (
		nh *SCNNotHeldError
		re *RelayError
	)
	switch {
	case ctx.Err() != nil:
		return classCanceled
	case errors.As(err, &nh):
		return classNotHeld
	case errors.As(err, &re):
		return classFatal
	}
	// statusError (5xx, 429, 408), ErrProtocol, transport errors, timeouts
	// of a single request.
	return classRetry
}

// backoff returns the delay before attempt+1 after attempt consecutive
// failures (attempt >= 1): exponential from min, capped at max, with
// "equal jitter" (a uniformly random half of it) so that many clients
// failed by the same relay do not come back in step. r is in [0, 1).
func backoff(attempt int, min, max time.Duration, r float64) time.Duration {
	d := min
	for i := 1; i < attempt && d < max; i++ {
		if d > max/2 {
			d = max
			break
		}
		d *= 2
	}
	d = mmin(d, max)
	half := d / 2
	return half + time.Duration(r*float64(d-half))
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func mmin(a, b time.Duration) time.Duration {
	if a < b {
		return a
	}
	return b
}

func jitter() float64 { return rand.Float64() }
