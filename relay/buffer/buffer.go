// Package buffer is the relay's event buffer: a bounded ring of whole
// windows in SCN order with an SCN index.
//
// Guarantees:
//   - Readers get whole windows, in SCN order, exactly the windows with SCN
//     greater than the checkpoint they ask from.
//   - One writer, many readers. Readers hold the lock only to search the
//     index and copy window headers, never during I/O, so a slow reader
//     cannot stall the writer. Window data is immutable once appended and is
//     shared with readers without copying.
//   - Memory is bounded by MaxBytes: when an append would exceed it, the
//     oldest whole windows are evicted first. A reader still writing out an
//     evicted window keeps only that window alive, at most one response's
//     worth, so a slow reader never grows the buffer.
//   - A window larger than MaxBytes is refused with *WindowTooLargeError.
//   - A reader asking from a checkpoint older than the low watermark (the
//     SCN of the newest evicted window, or the relay's start position) gets
//     *SCNNotHeldError with the oldest SCN still held.
package buffer

import (
	"errors"
	"fmt"
	"sync"
)

// Overhead is the bookkeeping size charged per window on top of its data,
// so that a buffer of tiny windows is bounded too.
const Overhead = 64

// Window is one window as the buffer holds it.
type Window struct {
	SCN       uint64
	Timestamp int64 // commit time, ns since the Unix epoch
	Events    int   // data events in the window
	// Data is the window's encoded frames, ending with its end-of-window
	// frame. The buffer and its readers share it: nobody may modify it.
	Data []byte
	// Position is the source position after the window, opaque to the
	// buffer; it becomes the low watermark position when the window is
	// evicted.
	Position []byte
}

func (w *Window) size() int64 { return int64(len(w.Data)+len(w.Position)) + Overhead }

// SCNNotHeldError says that a checkpoint is older than what the buffer can
// serve.
type SCNNotHeldError struct {
	Checkpoint   uint64 // the SCN asked from
	OldestSCN    uint64 // SCN of the oldest window held (0 when empty)
	LowWatermark uint64 // the oldest checkpoint SCN still servable
}

func (e *SCNNotHeldError) Error() string {
	return fmt.Sprintf("databus: checkpoint scn %d is no longer held: the oldest checkpoint the relay can serve is %d (oldest window held: %d)",
		e.Checkpoint, e.LowWatermark, e.OldestSCN)
}

// WindowTooLargeError refuses a window that alone exceeds the buffer.
type WindowTooLargeError struct {
	SCN      uint64
	Size     int64
	MaxBytes int64
}

func (e *WindowTooLargeError) Error() string {
	return fmt.Sprintf("databus: window scn %d needs %d bytes, more than the whole buffer (%d bytes): raise buffer.maxBytes",
		e.SCN, e.Size, e.MaxBytes)
}

// ErrOutOfOrder refuses a window whose SCN is not above every SCN seen.
var ErrOutOfOrder = errors.New("databus: window SCN is not greater than the previous one")

// Info is a snapshot of the buffer's state.
type Info struct {
	MinSCN, MaxSCN  uint64 // SCNs of the oldest and newest window held; 0 when empty
	LowWatermark    uint64
	LowPosition     []byte
	Windows         int
	Events          int64
	Bytes, MaxBytes int64
	OldestTimestamp int64
	NewestTimestamp int64
}

// Buffer is the ring. Its zero value is not usable; call New.
type Buffer struct {
	maxBytes int64

	mu sync.RWMutex
	// ring holds count windows starting at head, in strictly increasing SCN.
	// Invariant: every window SCN > lowWM; bytes = sum of sizes <= maxBytes.
	ring    []Window
	head    int
	count   int
	bytes   int64
	events  int64
	lowWM   uint64
	lowPos  []byte
	lastSCN uint64 // newest SCN ever appended, or the start position
	// changed is closed by the next Append when waited is set.
	changed chan struct{}
	waited  bool
	closed  bool
}

// New returns an empty buffer bounded to maxBytes.
func New(maxBytes int64) *Buffer {
	return &Buffer{maxBytes: maxBytes, ring: make([]Window, 16), changed: make(chan struct{})}
}

// SetStart sets the low watermark to the relay's start position, before
// the first Append: windows at or below scn are not held, and a reader
// asking from below it gets *SCNNotHeldError.
func (b *Buffer) SetStart(scn uint64, pos []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lowWM, b.lowPos, b.lastSCN = scn, pos, scn
}

func (b *Buffer) at(i int) *Window { return &b.ring[(b.head+i)%len(b.ring)] }

// Append adds a window, evicting the oldest windows as needed. It returns
// how many windows it evicted.
func (b *Buffer) Append(w Window) (evicted int, err error) {
	size := w.size()
	if size > b.maxBytes {
		return 0, &WindowTooLargeError{SCN: w.SCN, Size: size, MaxBytes: b.maxBytes}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if w.SCN <= b.lastSCN {
		return 0, fmt.Errorf("%w: %d after %d", ErrOutOfOrder, w.SCN, b.lastSCN)
	}
	for b.bytes+size > b.maxBytes {
		b.evictLocked()
		evicted++
	}
	if b.count == len(b.ring) {
		b.growLocked()
	}
	*b.at(b.count) = w
	b.count++
	b.bytes += size
	b.events += int64(w.Events)
	b.lastSCN = w.SCN
	if b.waited && !b.closed {
		close(b.changed)
		b.changed = make(chan struct{})
		b.waited = false
	}
	return evicted, nil
}

func (b *Buffer) evictLocked() {
	w := b.at(0)
	b.lowWM, b.lowPos = w.SCN, w.Position
	b.bytes -= w.size()
	b.events -= int64(w.Events)
	*w = Window{}
	b.head = (b.head + 1) % len(b.ring)
	b.count--
}

func (b *Buffer) growLocked() {
	ring := make([]Window, 2*len(b.ring))
	for i := 0; i < b.count; i++ {
		ring[i] = *b.at(i)
	}
	b.ring, b.head = ring, 0
}

// search returns the index of the first window with SCN > scn.
func (b *Buffer) searchLocked(scn uint64) int {
	lo, hi := 0, b.count
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if b.at(m).SCN <= scn {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// Read appends to dst the windows with SCN > after, in SCN order, as many as
// fit in maxBytes of data but at least one, and returns the extended slice.
// It returns nothing (and no error) when no window is newer than after.
func (b *Buffer) Read(after uint64, maxBytes int, dst []Window) ([]Window, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if after < b.lowWM {
		e := &SCNNotHeldError{Checkpoint: after, LowWatermark: b.lowWM}
		if b.count > 0 {
			e.OldestSCN = b.at(0).SCN
		}
		return dst, e
	}
	total := 0
	for i := b.searchLocked(after); i < b.count; i++ {
		w := b.at(i)
		if total > 0 && total+len(w.Data) > maxBytes {
			break
		}
		total += len(w.Data)
		dst = append(dst, *w)
	}
	return dst, nil
}

// Changed returns a channel that is closed by the next Append or by Close.
// Take it before Read to wait without missing a window:
//
//	ch := b.Changed(); ws, _ := b.Read(after, n, nil); if len(ws) == 0 { <-ch }
func (b *Buffer) Changed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.waited = true
	return b.changed
}

// Close wakes every waiter; it is idempotent. Reads still work afterwards.
func (b *Buffer) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.closed = true
		close(b.changed)
		b.changed = make(chan struct{})
		close(b.changed) // later waiters return at once too
	}
}

// TimestampAt returns the commit time of the newest window with SCN <= scn,
// for lag in seconds; ok is false when no such window is held.
func (b *Buffer) TimestampAt(scn uint64) (ts int64, ok bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	i := b.searchLocked(scn)
	if i == 0 {
		return 0, false
	}
	return b.at(i - 1).Timestamp, true
}

// Info returns a snapshot of the buffer's state.
func (b *Buffer) Info() Info {
	b.mu.RLock()
	defer b.mu.RUnlock()
	in := Info{LowWatermark: b.lowWM, LowPosition: b.lowPos, Windows: b.count, Events: b.events, Bytes: b.bytes, MaxBytes: b.maxBytes}
	if b.count > 0 {
		first, last := b.at(0), b.at(b.count-1)
		in.MinSCN, in.MaxSCN = first.SCN, last.SCN
		in.OldestTimestamp, in.NewestTimestamp = first.Timestamp, last.Timestamp
	}
	return in
}

// LastSCN returns the newest SCN appended, or the start position.
func (b *Buffer) LastSCN() uint64 {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.lastSCN
}
