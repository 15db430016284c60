// Package buffer is the relay's event buffer: a bounded ring of whole
// windows in SCN order with an SCN index. A window is held either in memory
// (Window.Data) or, when it is large, in a file of its own (Window.Spill).
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
//   - Disk is bounded by MaxSpillBytes (SetSpillBounds): a spilled window
//     is charged only SpillOverhead (plus its position) against MaxBytes,
//     and its file's size against MaxSpillBytes; the number of spilled
//     windows (open files) is bounded too. When an append would exceed any
//     bound, the oldest windows are evicted. Evicting a
//     spilled window deletes its file at once; the open file stays readable
//     by the readers that hold it (unlink semantics) and is closed when the
//     last of them releases it.
//   - A window larger than MaxBytes, or a spilled window larger than
//     MaxSpillBytes, is refused with *WindowTooLargeError.
//
// # Spilled windows and their readers
//
// Read returns spilled windows with a reference to their file: each such
// Window must be released exactly once (Window.Release, or Release for a
// slice) when the reader is done with it. Readers read the file only with
// ReadAt (Spill.Reader), never through its offset, so any number of them
// share one open file, and none ever opens the file by its path: there is
// no window between eviction and reading in which a path could vanish.
//   - A reader asking from a checkpoint older than the low watermark (the
//     SCN of the newest evicted window, or the relay's start position) gets
//     *SCNNotHeldError with the oldest SCN still held.
package buffer

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
)

// Overhead is the bookkeeping size charged per window on top of its data,
// so that a buffer of tiny windows is bounded too.
const Overhead = 64

// SpillOverhead is what a spilled window is charged against MaxBytes on
// top of Overhead and its position: its Spill and open file.
const SpillOverhead = 256

// Window is one window as the buffer holds it.
type Window struct {
	SCN       uint64
	Timestamp int64 // commit time, ns since the Unix epoch
	Events    int   // data events in the window
	// Data is the window's encoded frames, ending with its end-of-window
	// frame. The buffer and its readers share it: nobody may modify it.
	// It is nil when Spill is set.
	Data []byte
	// Spill, when set, holds the window's frames in a file instead of Data.
	// In a Window returned by Read it is a reference the reader must
	// release (Release).
	Spill *Spill
	// Position is the source position after the window, opaque to the
	// buffer; it becomes the low watermark position when the window is
	// evicted.
	Position []byte
}

// size is what the window is charged against MaxBytes.
func (w *Window) size() int64 {
	if w.Spill != nil {
		return int64(len(w.Position)) + Overhead + SpillOverhead
	}
	return int64(len(w.Data)+len(w.Position)) + Overhead
}

// spillSize is what the window is charged against MaxSpillBytes.
func (w *Window) spillSize() int64 {
	if w.Spill != nil {
		return w.Spill.size
	}
	return 0
}

// Len returns the length of the window's frames, in memory or spilled.
func (w *Window) Len() int64 {
	if w.Spill != nil {
		return w.Spill.size
	}
	return int64(len(w.Data))
}

// Release drops the reader's reference to a spilled window's file (see
// Read) and clears w.Spill; it does nothing for a window held in memory.
func (w *Window) Release() {
	if w.Spill != nil {
		w.Spill.release()
		w.Spill = nil
	}
}

// Release releases every window of ws (see Window.Release).
func Release(ws []Window) {
	for i := range ws {
		ws[i].Release()
	}
}

// Spill is a window's frames in a file. The buffer owns it from a
// successful Append: eviction deletes the file, and the file is closed once
// the buffer and every reader have released it. Until then it is read
// through Reader only.
type Spill struct {
	f    *os.File
	path string
	size int64
	// refs counts the buffer's reference and one per Window handed out by
	// Read and not released yet. Invariant: the file is open while refs > 0.
	refs atomic.Int64
}

// NewSpill wraps f, an open file holding size bytes of frames, stored at
// path. The caller must not use f afterwards except through the Spill.
func NewSpill(f *os.File, path string, size int64) *Spill {
	s := &Spill{f: f, path: path, size: size}
	s.refs.Store(1)
	return s
}

// Size returns the length of the frames.
func (s *Spill) Size() int64 { return s.size }

// Path returns where the file is (or was, once evicted) stored.
func (s *Spill) Path() string { return s.path }

// Reader returns a new reader of the frames from their start. It reads with
// ReadAt, so readers never disturb each other.
func (s *Spill) Reader() *io.SectionReader { return io.NewSectionReader(s.f, 0, s.size) }

// Discard deletes the file and drops the caller's reference: for a Spill
// that Append refused, or that never reached it.
func (s *Spill) Discard() {
	os.Remove(s.path)
	s.release()
}

func (s *Spill) acquire() { s.refs.Add(1) }

func (s *Spill) release() {
	switch n := s.refs.Add(-1); {
	case n == 0:
		s.f.Close()
	case n < 0:
		panic("buffer: spilled window released more often than it was read")
	}
}

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

// WindowTooLargeError refuses a window that alone exceeds the buffer: its
// memory bound (MaxBytes) or, for a spilled window, its disk bound
// (MaxSpillBytes, Spill set).
type WindowTooLargeError struct {
	// SCN is the window's SCN, or 0 when the window was refused before its
	// commit was read (a large transaction still arriving in chunks); After
	// is then the SCN of the window before it.
	SCN      uint64
	After    uint64
	Size     int64 // bytes needed (at least)
	MaxBytes int64 // the bound it exceeds
	Spill    bool  // the bound is MaxSpillBytes
}

func (e *WindowTooLargeError) Error() string {
	which := fmt.Sprintf("window scn %d", e.SCN)
	if e.SCN == 0 {
		which = fmt.Sprintf("the window after scn %d (a transaction still arriving)", e.After)
	}
	if e.Spill {
		return fmt.Sprintf("databus: %s needs %d bytes or more, more than the buffer may spill to disk (%d bytes): raise buffer.maxSpillBytes",
			which, e.Size, e.MaxBytes)
	}
	return fmt.Sprintf("databus: %s needs %d bytes, more than the whole buffer (%d bytes): raise buffer.maxBytes",
		which, e.Size, e.MaxBytes)
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
	// Spilled windows held and the length of their files, and their bounds.
	SpilledWindows, MaxSpilledWindows int
	SpillBytes, MaxSpillBytes         int64
	OldestTimestamp                   int64
	NewestTimestamp                   int64
}

// Buffer is the ring. Its zero value is not usable; call New.
type Buffer struct {
	maxBytes int64

	mu         sync.RWMutex
	maxSpill   int64
	maxSpilled int
	// ring holds count windows starting at head, in strictly increasing SCN.
	// Invariants: every window SCN > lowWM; bytes = sum of sizes <= maxBytes;
	// spillBytes = sum of spilled windows' file sizes <= maxSpill; spilled
	// counts them, <= maxSpilled.
	ring       []Window
	head       int
	count      int
	bytes      int64
	spillBytes int64
	spilled    int
	events     int64
	lowWM      uint64
	lowPos     []byte
	lastSCN    uint64 // newest SCN ever appended, or the start position
	// changed is closed by the next Append when waited is set.
	changed chan struct{}
	waited  bool
	closed  bool
}

// New returns an empty buffer bounded to maxBytes, which refuses spilled
// windows until SetSpillBounds allows them.
func New(maxBytes int64) *Buffer {
	return &Buffer{maxBytes: maxBytes, ring: make([]Window, 16), changed: make(chan struct{})}
}

// SetSpillBounds bounds the total size of the spilled windows' files, and
// their number (each holds an open file). Call it before the first Append.
func (b *Buffer) SetSpillBounds(maxBytes int64, maxWindows int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.maxSpill, b.maxSpilled = maxBytes, maxWindows
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

// ErrDataAndSpill refuses a window with both Data and Spill set.
var ErrDataAndSpill = errors.New("databus: buffer: a window has both data and a spill file")

// Append adds a window, evicting the oldest windows as needed. It returns
// how many windows it evicted. With w.Spill set, the buffer owns the spill
// once Append succeeds; on an error the caller still does (Spill.Discard).
// The files of evicted spilled windows are deleted before Append returns.
func (b *Buffer) Append(w Window) (evicted int, err error) {
	if w.Spill != nil && w.Data != nil {
		return 0, ErrDataAndSpill
	}
	size, spill := w.size(), w.spillSize()
	if size > b.maxBytes {
		return 0, &WindowTooLargeError{SCN: w.SCN, Size: size, MaxBytes: b.maxBytes}
	}
	var drop []*Spill
	defer func() { // after the unlock below: no file I/O under the lock
		for _, s := range drop {
			s.Discard()
		}
	}()
	b.mu.Lock()
	defer b.mu.Unlock()
	spilled := 0
	if w.Spill != nil {
		spilled = 1
	}
	if spill > b.maxSpill || spilled > b.maxSpilled {
		return 0, &WindowTooLargeError{SCN: w.SCN, Size: spill, MaxBytes: b.maxSpill, Spill: true}
	}
	if w.SCN <= b.lastSCN {
		return 0, fmt.Errorf("%w: %d after %d", ErrOutOfOrder, w.SCN, b.lastSCN)
	}
	for b.count > 0 && (b.bytes+size > b.maxBytes || b.spillBytes+spill > b.maxSpill || b.spilled+spilled > b.maxSpilled) {
		if s := b.evictLocked(); s != nil {
			drop = append(drop, s)
		}
		evicted++
	}
	if b.count == len(b.ring) {
		b.growLocked()
	}
	*b.at(b.count) = w
	b.count++
	b.bytes += size
	b.events += int64(w.Events)
	if w.Spill != nil {
		b.spillBytes += spill
		b.spilled++
	}
	b.lastSCN = w.SCN
	if b.waited && !b.closed {
		close(b.changed)
		b.changed = make(chan struct{})
		b.waited = false
	}
	return evicted, nil
}

// evictLocked drops the oldest window and returns its spill, whose file the
// caller deletes once the lock is released.
func (b *Buffer) evictLocked() *Spill {
	w := b.at(0)
	b.lowWM, b.lowPos = w.SCN, w.Position
	b.bytes -= w.size()
	b.events -= int64(w.Events)
	s := w.Spill
	if s != nil {
		b.spillBytes -= s.size
		b.spilled--
	}
	*w = Window{}
	b.head = (b.head + 1) % len(b.ring)
	b.count--
	return s
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
// fit in maxBytes of frames (Window.Len) but at least one, and returns the
// extended slice. It returns nothing (and no error) when no window is newer
// than after. Every spilled window it returns holds a reference to its
// file, which the caller must release (Release).
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
	total := int64(0)
	for i := b.searchLocked(after); i < b.count; i++ {
		w := b.at(i)
		n := w.Len()
		if total > 0 && total+n > int64(maxBytes) {
			break
		}
		total += n
		if w.Spill != nil {
			w.Spill.acquire()
		}
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
	in := Info{LowWatermark: b.lowWM, LowPosition: b.lowPos, Windows: b.count, Events: b.events, Bytes: b.bytes, MaxBytes: b.maxBytes,
		SpilledWindows: b.spilled, MaxSpilledWindows: b.maxSpilled, SpillBytes: b.spillBytes, MaxSpillBytes: b.maxSpill}
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
