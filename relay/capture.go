package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/relay/buffer"
	"github.com/databus-go/databus/schema"
	"github.com/databus-go/databus/source"
)

// Capture retry backoff.
const (
	backoffMin = 100 * time.Millisecond
	backoffMax = 30 * time.Second
)

// recaptureGrace is how long after opening the source the relay waits for
// it to yield windows up to the persisted maxScn before it reports a gap.
const recaptureGrace = 30 * time.Second

// ErrSourceContract is wrapped by the errors the relay returns from emit
// when a source breaks the source.Window invariants. Capture stops: running
// the source again would yield the same windows.
var ErrSourceContract = errors.New("databus: the source broke its contract")

// retryable is the one place that decides whether capture runs the source
// again after err.
func retryable(err error) bool {
	var tooLarge *buffer.WindowTooLargeError
	switch {
	case errors.As(err, &tooLarge),
		errors.Is(err, buffer.ErrOutOfOrder),
		errors.Is(err, ErrSourceContract),
		errors.Is(err, event.ErrTooLarge):
		return false
	}
	return true
}

// capture owns the source: it opens it, then runs it from the persisted low
// watermark and, after each failure, from the position of the newest window
// captured, with capped exponential backoff. It starts the release loop
// (in wg) once the source is open.
func (r *Relay) capture(ctx context.Context, wg *sync.WaitGroup) {
	delay := backoffMin
	sleep := func() bool {
		t := time.NewTimer(delay)
		defer t.Stop()
		delay = min(2*delay, backoffMax)
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	for {
		tables, err := r.src.Open(ctx)
		if err == nil {
			r.registerTables(tables)
			break
		}
		if ctx.Err() != nil {
			return
		}
		r.captureFailed(err, false)
		if !sleep() {
			return
		}
	}
	r.mu.Lock()
	r.opened = true
	r.mu.Unlock()
	close(r.open)
	opened := r.now()
	r.log.Info("source open", "from", r.start.LowWatermark.SCN)
	wg.Go(func() { r.releaseLoop(ctx, opened) })

	c := &capturer{r: r, pos: r.start.LowWatermark, arena: newArena(int64(r.cfg.Buffer.MaxBytes)), sp: newSpiller(r.spillDir, &r.cfg)}
	defer c.sp.discard()
	for {
		before := c.windows
		err := r.src.Run(ctx, c.pos, c.emit)
		// Chunks without their final window are abandoned: the next Run
		// emits the transaction again from its start.
		c.abandon()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("databus: source Run returned without an error")
		}
		if !retryable(err) {
			r.captureFailed(err, true)
			return
		}
		if c.windows > before {
			delay = backoffMin
		}
		r.captureFailed(err, false)
		if !sleep() {
			return
		}
	}
}

func (r *Relay) captureFailed(err error, permanent bool) {
	r.m.captureErrors.Inc()
	r.mu.Lock()
	r.captureErr, r.stopped = err, permanent
	r.mu.Unlock()
	if permanent {
		r.m.captureStopped.Set(1)
		r.log.Error("capture stopped; the relay keeps serving the windows it holds", "err", err)
		return
	}
	r.log.Warn("capture failed; retrying", "err", err)
}

// capturer is the state of the capture goroutine; emit runs on it only.
type capturer struct {
	r *Relay
	// pos is the source position after the newest window appended: where
	// the source resumes after a failure, so no SCN is appended twice.
	pos     source.Position
	windows int64
	dupLog  time.Time
	arena   arena
	// sp spools the chunks of a window still arriving and writes the
	// segment files of large windows.
	sp *spiller
}

// arena hands out the byte slices windows are encoded into, carved one
// after another from chunks, so that consecutive windows usually sit side by
// side in memory and the stream's fast path writes a run of them with one
// write, without copying (see writeWhole).
//
// A window's Data has a capacity running to the end of its chunk: nobody may
// append to it (buffer.Window.Data is immutable). A chunk lives while any of
// its windows is held or being sent, so the arena adds at most about two
// chunks to the buffer's accounted bytes: the partly evicted oldest one and
// the unfilled newest one. Chunks are Buffer.MaxBytes/16 up to 1 MiB;
// windows larger than a quarter chunk get an allocation of their own.
type arena struct {
	size  int
	chunk []byte
}

const maxChunk = 1 << 20

func newArena(bufferMax int64) arena {
	return arena{size: int(min(bufferMax/16, maxChunk))}
}

// alloc returns an empty slice with room for exactly n bytes of appends.
func (a *arena) alloc(n int) []byte {
	if n > a.size/4 {
		return make([]byte, 0, n)
	}
	if cap(a.chunk)-len(a.chunk) < n {
		a.chunk = make([]byte, 0, a.size)
	}
	start := len(a.chunk)
	a.chunk = a.chunk[:start+n]
	return a.chunk[start:start]
}

// emit takes one window, or one chunk of a window, from the source.
func (c *capturer) emit(ctx context.Context, w *source.Window) error {
	if w.Partial {
		return c.chunk(w)
	}
	if w.Abandon {
		return fmt.Errorf("%w: window scn %d has Abandon set without Partial", ErrSourceContract, w.SCN)
	}
	r := c.r
	if w.SCN <= r.buf.LastSCN() {
		// Already held (a source replaying after a reconnect): appending it
		// again would repeat an SCN.
		c.sp.discard()
		r.m.duplicates.Inc()
		if now := time.Now(); now.Sub(c.dupLog) > time.Minute {
			c.dupLog = now
			r.log.Warn("source emitted a window already held; skipped", "scn", w.SCN, "newest", r.buf.LastSCN())
		}
		return nil
	}
	err := c.append(w)
	c.sp.discard()
	return err
}

// chunk spools one chunk of a window whose commit the source has not read
// yet (see "Large transactions" in package source).
func (c *capturer) chunk(w *source.Window) error {
	if w.SCN != 0 || w.TxID != "" || w.Position.SCN != 0 || len(w.Position.Data) != 0 {
		return fmt.Errorf("%w: a partial window (chunk) carries an SCN, transaction id or position (scn %d)", ErrSourceContract, w.SCN)
	}
	if w.Abandon {
		if len(w.Events) > 0 {
			return fmt.Errorf("%w: an abandoning chunk carries %d events", ErrSourceContract, len(w.Events))
		}
		c.abandon()
		return nil
	}
	size, count, err := c.check(w.Events, 0)
	if err != nil {
		return err
	}
	if err := c.sp.addChunk(w.Events, int64(size), count, c.r.buf.LastSCN()); err != nil {
		c.sp.discard()
		return err
	}
	c.r.m.chunksIn.Inc()
	return nil
}

// abandon discards the chunks spooled, if any.
func (c *capturer) abandon() {
	if c.sp.spool != nil {
		c.sp.discard()
		c.r.m.abandoned.Inc()
	}
}

// check validates a window's (or chunk's) events, every one of which must
// carry scn, and registers its schema changes. It returns their encoded
// size and the number of data events.
func (c *capturer) check(events []event.Event, scn uint64) (size int, count uint32, err error) {
	for i := range events {
		e := &events[i]
		if e.SCN != scn {
			if scn == 0 {
				return 0, 0, fmt.Errorf("%w: event %d of a partial window has scn %d, not 0", ErrSourceContract, i, e.SCN)
			}
			return 0, 0, fmt.Errorf("%w: event %d of window %d has scn %d", ErrSourceContract, i, scn, e.SCN)
		}
		switch e.Kind {
		case event.KindData:
			count++
		case event.KindSchemaChange:
			c.r.registerChange(e)
		default:
			return 0, 0, fmt.Errorf("%w: event %d of window %d is of kind %v", ErrSourceContract, i, scn, e.Kind)
		}
		size += e.Size()
	}
	return size, count, nil
}

// append encodes a whole window, or the final chunk of a spooled one, in
// memory or into a segment file, and appends it to the buffer.
func (c *capturer) append(w *source.Window) error {
	r := c.r
	size, count, err := c.check(w.Events, w.SCN)
	if err != nil {
		return err
	}
	spooled, spooledEvents := c.sp.spooled()
	eow := event.EndOfWindow(w.SCN, w.Timestamp, count+spooledEvents, w.TxID)
	total := spooled + int64(size+eow.Size())
	pos := w.Position
	pos.SCN = w.SCN // a window's Position is the one after it: its SCN is the window's
	pj, err := marshalPosition(pos)
	if err != nil {
		return fmt.Errorf("%w: window scn %d: position: %v", ErrSourceContract, w.SCN, err)
	}
	bw := buffer.Window{SCN: w.SCN, Timestamp: w.Timestamp, Events: int(count + spooledEvents), Position: pj}
	if total <= c.sp.threshold {
		data := c.arena.alloc(int(total))
		if spooled > 0 {
			if data, err = c.sp.readSpool(data, w.SCN, w.Timestamp); err != nil {
				return err
			}
		}
		for i := range w.Events {
			if data, err = event.AppendFrame(data, &w.Events[i]); err != nil {
				return fmt.Errorf("window scn %d: %w", w.SCN, err)
			}
		}
		if data, err = event.AppendFrame(data, &eow); err != nil {
			return fmt.Errorf("window scn %d: %w", w.SCN, err)
		}
		bw.Data = data
	} else {
		// Refuse a window the buffer cannot hold before writing it, rather
		// than writing it only for Append to refuse it.
		if total > c.sp.maxSpill {
			return &buffer.WindowTooLargeError{SCN: w.SCN, Size: total, MaxBytes: c.sp.maxSpill, Spill: true}
		}
		if bw.Spill, err = c.sp.writeSegment(w, &eow, total); err != nil {
			return fmt.Errorf("window scn %d: %w", w.SCN, err)
		}
	}
	if _, err := r.buf.Append(bw); err != nil {
		if bw.Spill != nil {
			bw.Spill.Discard()
		}
		return err
	}
	c.pos = pos
	c.windows++
	r.m.windowsIn.Inc()
	if bw.Spill != nil {
		r.m.windowsSpilled.Inc()
	}
	r.m.eventsIn.Add(float64(bw.Events))
	r.m.bytesIn.Add(float64(total))
	r.m.lastCapture.Set(float64(r.now().UnixNano()) / 1e9)
	r.captured(w.SCN)
	return nil
}

// captured clears a transient capture error and notes recovery after a
// restart once the source has reached the persisted maxScn again.
func (r *Relay) captured(scn uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.captureErr != nil && !r.stopped {
		r.captureErr = nil
		r.log.Info("capture resumed", "scn", scn)
	}
	if r.recapturing && scn >= r.start.MaxSCN {
		r.recapturing = false
		r.log.Info("re-captured every window held before the restart", "maxScn", r.start.MaxSCN, "scn", scn)
	}
}

func marshalPosition(p source.Position) ([]byte, error) {
	// Built by hand: this runs once per window, and encoding/json (which
	// also re-compacts the raw data) took a quarter of the capture path's
	// CPU with single-row windows.
	b := make([]byte, 0, 32+len(p.Data))
	b = append(b, `{"scn":`...)
	b = strconv.AppendUint(b, p.SCN, 10)
	if len(p.Data) > 0 {
		if !json.Valid(p.Data) {
			return nil, errors.New("position data is not valid JSON")
		}
		b = append(b, `,"data":`...)
		b = append(b, p.Data...)
	}
	return append(b, '}'), nil
}

// releaseLoop persists the low watermark and releases evicted windows to the
// source every release interval, until ctx is done.
func (r *Relay) releaseLoop(ctx context.Context, opened time.Time) {
	t := time.NewTicker(r.cfg.ReleaseInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.persistAndRelease(ctx)
		r.checkRecapture(opened)
	}
}

// persistAndRelease makes the buffer's low watermark durable and only then
// tells the source it may prune up to it.
func (r *Relay) persistAndRelease(ctx context.Context) {
	r.stateMu.Lock()
	defer r.stateMu.Unlock()
	if !r.persistLocked() {
		return
	}
	low := r.persisted.LowWatermark
	if low.SCN <= r.released {
		return
	}
	if err := r.src.Release(ctx, low); err != nil {
		if ctx.Err() == nil {
			r.m.releaseErrors.Inc()
			r.log.Warn("releasing evicted windows to the source", "scn", low.SCN, "err", err)
		}
		return
	}
	r.released = low.SCN
}

// persistLocked writes position.json when the low watermark or the newest
// SCN moved. It reports whether the file is up to date.
func (r *Relay) persistLocked() bool {
	in := r.buf.Info()
	next := r.persisted
	next.MaxSCN = max(next.MaxSCN, r.buf.LastSCN())
	if in.LowWatermark != next.LowWatermark.SCN {
		var p source.Position
		if err := json.Unmarshal(in.LowPosition, &p); err != nil {
			// Only emit writes LowPosition, from marshalPosition.
			r.log.Error("unreadable low watermark position", "err", err)
			return false
		}
		p.SCN = in.LowWatermark
		next.LowWatermark = p
	}
	if next.LowWatermark.SCN == r.persisted.LowWatermark.SCN && next.MaxSCN == r.persisted.MaxSCN {
		return true
	}
	if err := writePosition(r.cfg.StateDir, next); err != nil {
		r.m.persistErrors.Inc()
		r.log.Error("persisting the capture position; the source keeps the windows until it succeeds", "err", err)
		return false
	}
	r.persisted = next
	return true
}

// checkRecapture reports a gap when, well after a restart, the source has
// still not yielded the windows up to the newest SCN captured before it.
func (r *Relay) checkRecapture(opened time.Time) {
	if r.now().Sub(opened) < max(recaptureGrace, 10*r.cfg.ReleaseInterval) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.recapturing {
		return
	}
	r.recapturing = false // report once
	r.m.captureErrors.Inc()
	r.log.Error("the source no longer yields every window captured before the restart: clients that consumed them will see a gap",
		"persistedMaxScn", r.start.MaxSCN, "recapturedUpTo", r.buf.LastSCN(), "lowWatermark", r.start.LowWatermark.SCN)
}

// registerTables adds table versions to the registry (skipping versions it
// already has) and persists schemas.json when any was new. A table that
// cannot be registered is logged: binary streaming does not need it.
func (r *Relay) registerTables(tables []schema.Table) {
	r.schemaMu.Lock()
	defer r.schemaMu.Unlock()
	added := false
	for _, t := range tables {
		if _, ok := r.reg.Get(t.ID, t.Version); ok {
			continue
		}
		if _, err := r.reg.Put(t); err != nil {
			r.log.Error("registering a schema", "source", t.Name, "version", t.Version, "err", err)
			continue
		}
		added = true
	}
	if !added {
		return
	}
	var all []schema.Table
	for _, l := range r.reg.Latests() {
		for _, e := range r.reg.Versions(l.ID) {
			all = append(all, e.Table)
		}
	}
	if err := writeSchemas(r.cfg.StateDir, all); err != nil {
		r.m.persistErrors.Inc()
		r.log.Error("persisting schemas", "err", err)
	}
}

func (r *Relay) registerChange(e *event.Event) {
	sc, err := e.SchemaChange()
	if err == nil {
		if _, ok := r.reg.Get(sc.Source, sc.Version); ok {
			return
		}
		var t schema.Table
		if t, err = schema.FromChange(sc); err == nil {
			r.registerTables([]schema.Table{t})
			return
		}
	}
	r.log.Error("unreadable schema change", "scn", e.SCN, "source", e.Source, "err", err)
}
