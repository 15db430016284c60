package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/databus-go/databus/checkpoint"
)

// The dispatcher delivers windows to the handler. Its decisions (deliver,
// commit, roll back, give up, save) are made by core, a state machine with
// no clock, no I/O and no goroutines; Client.dispatch performs them.
//
// One window's life, as core sees it:
//
//	offer ──(nothing to call)──────────────────────────► commit
//	  │
//	  └─► deliver ──ok──────────────────────────────────► commit
//	        ▲  │
//	        │  └─err─► rollback ──(attempts left)── retry ─┘
//	        │                     └─(limit reached)──────► give up (final)
//
// A commit moves the checkpoint to the window's SCN and asks for a save
// every `every` commits (again after each commit while a save fails).

// stepKind is what the shell must do next.
type stepKind uint8

const (
	// stepDeliver: call the handler with the current window.
	stepDeliver stepKind = iota + 1
	// stepCommit: the window is done; the checkpoint is now its SCN. Save
	// it if step.save.
	stepCommit
	// stepRollback: call OnRollback; then, unless step.final, back off and
	// call retry. When final, Run gives up with a *HandlerError.
	stepRollback
)

type step struct {
	kind    stepKind
	attempt int  // deliver: 1-based attempt; rollback: failed attempts so far
	save    bool // commit: persist the checkpoint after the window
	final   bool // rollback: no attempt left
}

// core is the dispatcher's decision logic.
type core struct {
	maxAttempts int // >= 1
	every       int // >= 1

	// committed is the SCN of the last window fully processed, or of the
	// start checkpoint. Invariant: it only grows, and only to the SCN of a
	// window whose delivery succeeded (or that needed none): it is never
	// inside or past a window that has not succeeded.
	committed uint64
	// unsaved counts the commits since the last successful save.
	unsaved int

	// busy is true between offer and the commit or final rollback of the
	// window cur; failures counts its failed deliveries.
	busy     bool
	cur      uint64
	failures int
}

func newCore(start uint64, maxAttempts, every int) *core {
	return &core{committed: start, maxAttempts: maxAttempts, every: every}
}

// offer starts window scn. call says whether there is anything to hand to
// the handler; a window with nothing to deliver commits at once.
// Precondition: no window in progress, scn > committed (the decoder
// guarantees both).
func (c *core) offer(scn uint64, call bool) step {
	if c.busy || scn <= c.committed {
		panic(fmt.Sprintf("databus: dispatcher offered window %d (busy %v, committed %d)", scn, c.busy, c.committed))
	}
	c.busy, c.cur, c.failures = true, scn, 0
	if !call {
		return c.commit()
	}
	return step{kind: stepDeliver, attempt: 1}
}

// result records the outcome of a delivery.
func (c *core) result(err error) step {
	if err == nil {
		return c.commit()
	}
	c.failures++
	final := c.failures >= c.maxAttempts
	if final {
		c.busy = false
	}
	return step{kind: stepRollback, attempt: c.failures, final: final}
}

// retry redelivers the current window after a non-final rollback.
func (c *core) retry() step {
	return step{kind: stepDeliver, attempt: c.failures + 1}
}

// abort abandons the current window without committing it (Run stopping).
func (c *core) abort() { c.busy = false }

func (c *core) commit() step {
	c.committed, c.busy = c.cur, false
	c.unsaved++
	return step{kind: stepCommit, save: c.unsaved >= c.every}
}

// saved records that checkpoint scn reached the store.
func (c *core) saved(scn uint64) {
	if scn == c.committed {
		c.unsaved = 0
	}
}

// pending reports whether the store is behind the committed checkpoint.
func (c *core) pending() bool { return c.unsaved > 0 }

// item is what the puller hands the dispatcher: a window, or the error that
// ended the puller, after every window before it.
type item struct {
	w   *Window
	err error
}

// dispatch runs windows from q through core until q yields an error, the
// handler gives up, or ctx ends.
func (c *Client) dispatch(ctx context.Context, q <-chan item, k *core) error {
	for {
		if err := ctx.Err(); err != nil {
			// Both cases of the select below may be ready: stop first.
			return err
		}
		var it item
		select {
		case it = <-q:
		case <-ctx.Done():
			return ctx.Err()
		}
		if it.err != nil {
			return it.err
		}
		w := it.w
		st := k.offer(w.order(), c.needsCall(w))
		for st.kind != stepCommit {
			switch st.kind {
			case stepDeliver:
				err := c.deliver(ctx, w)
				if err != nil && ctx.Err() != nil {
					// Stopping, not a failure of the handler: the window
					// stays uncommitted and is delivered again next Run.
					c.rollback(ctx, c.rollbackSCN(), err)
					k.abort()
					return ctx.Err()
				}
				st = k.result(err)
				if st.kind == stepRollback {
					c.stats.retries.Add(1)
					c.cfg.logger.Warn("databus: handler failed on window", "scn", w.SCN, "attempt", st.attempt, "final", st.final, "err", err)
					c.rollback(ctx, c.rollbackSCN(), err)
					if st.final {
						return &HandlerError{SCN: w.SCN, Attempts: st.attempt, Err: err}
					}
					if err := sleep(ctx, backoff(st.attempt, c.cfg.retryMin, c.cfg.retryMax, jitter())); err != nil {
						k.abort()
						return err
					}
					st = k.retry()
				}
			default:
				panic("unreachable")
			}
		}
		c.committed(w)
		if st.save {
			c.save(ctx, k)
		}
	}
}

// needsCall reports whether window w has anything for the handler.
func (c *Client) needsCall(w *Window) bool {
	if len(w.Events) > 0 || c.cfg.emptyWindows {
		return true
	}
	for _, ch := range w.Changes {
		if ch.Truncate || ch.Drop {
			return true // rows to drop, though the window has no row events
		}
	}
	_, ok := c.h.(SchemaChangeHandler)
	return ok && len(w.Changes) > 0
}

// deliver makes one attempt at window w under the callback budget.
func (c *Client) deliver(ctx context.Context, w *Window) error {
	cctx, cancel := c.budget(ctx)
	defer cancel()
	err := func() error {
		if sh, ok := c.h.(SchemaChangeHandler); ok {
			for _, ch := range w.Changes {
				if err := sh.OnSchemaChange(cctx, ch.Table); err != nil {
					return err
				}
			}
		}
		if len(w.Events) > 0 || c.cfg.emptyWindows || len(w.Changes) > 0 {
			return c.h.OnWindow(cctx, w)
		}
		return nil
	}()
	if ctx.Err() == nil && errors.Is(cctx.Err(), context.DeadlineExceeded) {
		// Overran: fail even if the handler returned nil, so that a
		// handler that ignores its context still has a budget.
		if err == nil {
			err = fmt.Errorf("%w (%v)", ErrCallbackTimeout, c.cfg.callTimeout)
		} else {
			err = fmt.Errorf("%w (%v): %w", ErrCallbackTimeout, c.cfg.callTimeout, err)
		}
	}
	return err
}

// rollback tells the handler that the stream is back at scn. When Run is
// stopping it still gets a context that lives for its budget.
func (c *Client) rollback(ctx context.Context, scn uint64, cause error) {
	if ctx.Err() != nil {
		ctx = context.WithoutCancel(ctx)
	}
	cctx, cancel := c.budget(ctx)
	defer cancel()
	c.h.OnRollback(cctx, scn, cause)
}

func (c *Client) budget(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.cfg.callTimeout > 0 {
		return context.WithTimeout(ctx, c.cfg.callTimeout)
	}
	return context.WithCancel(ctx)
}

// committed publishes that window w is done: the checkpoint after it is
// the one its phase gave it, or the online one at its SCN.
func (c *Client) committed(w *Window) {
	cp := w.cp
	if cp.Mode == "" {
		cp = checkpoint.At(w.SCN)
	}
	c.setCheckpoint(cp)
	if w.Snapshot {
		c.boot.rows.Store(cp.Bootstrap.Rows)
	}
	c.stats.windows.Add(1)
	c.stats.events.Add(uint64(len(w.Events)))
}

// saveTimeout bounds the save Run makes on its way out, when its own
// context is already done.
const saveTimeout = 10 * time.Second

// save persists the committed checkpoint. A failure is logged and retried
// after the next window: the window is processed either way, and a lost
// save only means replaying windows after a crash.
func (c *Client) save(ctx context.Context, k *core) error {
	seq, cp := k.committed, c.Checkpoint()
	if err := c.saveCheckpoint(ctx, cp); err != nil {
		return err
	}
	k.saved(seq)
	return nil
}

// saveCheckpoint persists cp, counting and logging a failure.
func (c *Client) saveCheckpoint(ctx context.Context, cp checkpoint.Checkpoint) error {
	if err := c.cfg.store.Save(ctx, cp); err != nil {
		c.stats.saveErrors.Add(1)
		c.cfg.logger.Error("databus: saving checkpoint failed", "checkpoint", cp.String(), "err", err)
		return err
	}
	c.stats.saves.Add(1)
	return nil
}

// rollbackSCN is the SCN OnRollback reports: the last window committed, or
// during a snapshot the snapshot's start SCN.
func (c *Client) rollbackSCN() uint64 {
	cp := c.Checkpoint()
	if cp.Mode == checkpoint.BootstrapSnapshot {
		return cp.Bootstrap.StartSCN
	}
	return cp.SCN
}
