package storetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/filter"
)

// baseTime is the commit time of SCN 0 in the suite's windows: window s
// commits at baseTime + s seconds unless a test says otherwise, so that
// Purge times are easy to reason about.
const baseTime = int64(1_700_000_000) * int64(time.Second)

func tsOf(scn uint64) int64 { return baseTime + int64(scn)*int64(time.Second) }

// win builds one window: its frames as the relay would send them (data
// frames, schema-change frames for truncates, end-of-window last) and the
// snapshot rows the producer would derive from them.
type win struct {
	scn    uint64
	ts     int64
	frames []byte
	rows   []store.Row
	count  uint32
}

func newWin(scn uint64) *win { return &win{scn: scn, ts: tsOf(scn)} }

func (w *win) at(ts int64) *win { w.ts = ts; return w }

func (w *win) appendFrame(e *event.Event) {
	var err error
	w.frames, err = event.AppendFrame(w.frames, e)
	if err != nil {
		panic(err)
	}
}

// upsert records an insert or update of (src, key) to payload.
func (w *win) upsert(src uint32, key []byte, payload string) *win {
	w.appendFrame(&event.Event{Kind: event.KindData, Op: event.OpUpdate, SCN: w.scn, Timestamp: w.ts, Source: src, SchemaVersion: 1, Key: key, Payload: []byte(payload)})
	w.count++
	w.rows = append(w.rows, store.Row{Source: src, Key: key, SCN: w.scn, Op: store.RowUpsert, Frame: rowFrame(w.scn, w.ts, src, key, payload)})
	return w
}

// del records a delete of (src, key).
func (w *win) del(src uint32, key []byte) *win {
	w.appendFrame(&event.Event{Kind: event.KindData, Op: event.OpDelete, SCN: w.scn, Timestamp: w.ts, Source: src, SchemaVersion: 1, Key: key})
	w.count++
	w.rows = append(w.rows, store.Row{Source: src, Key: key, SCN: w.scn, Op: store.RowDelete})
	return w
}

// truncate records a TRUNCATE of src: a schema-change frame in the log, a
// truncate row in the snapshot.
func (w *win) truncate(src uint32) *win {
	e, err := event.NewSchemaChange(w.scn, w.ts, event.SchemaChange{Source: src, Name: fmt.Sprintf("db.t%d", src), Version: 1, Key: []string{"id"}, Avro: json.RawMessage(`{"type":"record","name":"t","fields":[]}`), DDL: "truncate", Truncate: true})
	if err != nil {
		panic(err)
	}
	w.appendFrame(&e)
	w.rows = append(w.rows, store.Row{Source: src, SCN: w.scn, Op: store.RowTruncate})
	return w
}

// window closes the window with its end-of-window frame.
func (w *win) window() store.Window {
	e := event.EndOfWindow(w.scn, w.ts, w.count, fmt.Sprintf("tx-%d", w.scn))
	w.appendFrame(&e)
	return store.Window{SCN: w.scn, Timestamp: w.ts, Frames: w.frames, Rows: w.rows}
}

// rowFrame is the snapshot's frame of a row: kind data, op insert, no
// before-image.
func rowFrame(scn uint64, ts int64, src uint32, key []byte, payload string) []byte {
	b, err := event.AppendFrame(nil, &event.Event{Kind: event.KindData, Op: event.OpInsert, SCN: scn, Timestamp: ts, Source: src, SchemaVersion: 1, Key: key, Payload: []byte(payload)})
	if err != nil {
		panic(err)
	}
	return b
}

func ikey(v int64) []byte  { return event.AppendKeyInt(nil, v) }
func ukey(v uint64) []byte { return event.AppendKeyUint(nil, v) }
func skey(s string) []byte { return event.AppendKeyString(nil, s) }

// model is the reference implementation of the store's semantics: plain
// maps and slices, applied change by change in stream order.
type model struct {
	empty    bool
	head     uint64
	headTime int64
	lw       uint64
	windows  []store.Window // held, oldest first
	rows     map[string]*mrow
}

// mrow is one snapshot row of the model; ts is the commit time of the
// window that last changed it (what tombstone purging goes by).
type mrow struct {
	src     uint32
	key     []byte
	scn     uint64
	ts      int64
	deleted bool
	frame   []byte
}

func newModel() *model { return &model{empty: true, rows: map[string]*mrow{}} }

func rowID(src uint32, key []byte) string {
	return string(fmt.Appendf(nil, "%08x", src)) + string(key)
}

func (m *model) apply(b *store.Batch) {
	if m.empty {
		m.empty = false
		m.head = b.After
		m.lw = b.After
	}
	for _, w := range b.Windows {
		for _, r := range w.Rows {
			switch r.Op {
			case store.RowUpsert:
				m.rows[rowID(r.Source, r.Key)] = &mrow{src: r.Source, key: r.Key, scn: r.SCN, ts: w.Timestamp, frame: r.Frame}
			case store.RowDelete:
				m.rows[rowID(r.Source, r.Key)] = &mrow{src: r.Source, key: r.Key, scn: r.SCN, ts: w.Timestamp, deleted: true}
			case store.RowTruncate:
				for _, x := range m.rows {
					if x.src == r.Source && !x.deleted {
						x.deleted, x.scn, x.ts, x.frame = true, r.SCN, w.Timestamp, nil
					}
				}
			}
		}
		m.windows = append(m.windows, w)
		m.head, m.headTime = w.SCN, w.Timestamp
	}
}

func (m *model) state() store.State {
	return store.State{Head: m.head, HeadTime: m.headTime, Empty: m.empty, LowWatermark: m.lw, Windows: uint64(len(m.windows))}
}

// snapshot returns the live rows with SCN <= asOf that f matches, in the
// suite's (source, key bytes) order.
func (m *model) snapshot(asOf uint64, f *filter.Filter) []*mrow {
	var out []*mrow
	for _, r := range m.rows {
		if r.deleted || r.scn > asOf {
			continue
		}
		if f != nil && !f.Match(event.Header{Kind: event.KindData, Source: r.src, Key: r.key}) {
			continue
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b *mrow) int { return cmpRow(a.src, a.key, b.src, b.key) })
	return out
}

func cmpRow(as uint32, ak []byte, bs uint32, bk []byte) int {
	if as != bs {
		if as < bs {
			return -1
		}
		return 1
	}
	return bytes.Compare(ak, bk)
}

// log returns the held windows in (after, upTo], filtered.
func (m *model) log(after, upTo uint64, f *filter.Filter) [][]byte {
	var out [][]byte
	for _, w := range m.windows {
		if w.SCN > after && w.SCN <= upTo {
			out = append(out, filterFrames(w.Frames, f))
		}
	}
	return out
}

// purge applies p as the suite reads the contract: the longest prefix of
// windows older than LogBefore, minus the head; tombstones by their
// window's time.
func (m *model) purge(p store.PurgePolicy) store.PurgeResult {
	var res store.PurgeResult
	if !p.LogBefore.IsZero() {
		lim := p.LogBefore.UnixNano()
		n := 0
		for n < len(m.windows) && m.windows[n].Timestamp < lim && m.windows[n].SCN != m.head {
			n++
		}
		if n > 0 {
			m.lw = m.windows[n-1].SCN
			m.windows = m.windows[n:]
			res.Windows = uint64(n)
		}
	}
	if !p.TombstonesBefore.IsZero() {
		lim := p.TombstonesBefore.UnixNano()
		for id, r := range m.rows {
			if r.deleted && r.ts < lim {
				delete(m.rows, id)
				res.Tombstones++
			}
		}
	}
	res.LowWatermark = m.lw
	return res
}

// tombstones counts the model's tombstones.
func (m *model) tombstones() int {
	n := 0
	for _, r := range m.rows {
		if r.deleted {
			n++
		}
	}
	return n
}

// filterFrames returns the frames of b that f passes, as Log must.
func filterFrames(b []byte, f *filter.Filter) []byte {
	if f == nil {
		return slices.Clone(b)
	}
	var out []byte
	for len(b) > 0 {
		h, n := event.PeekHeader(b)
		if f.Match(h) {
			out = append(out, b[:n]...)
		}
		b = b[n:]
	}
	return out
}

// splitFrames splits concatenated frames, validating each.
func splitFrames(t *testing.T, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for len(b) > 0 {
		n, err := event.FrameLen(b)
		if err != nil || n > len(b) {
			t.Fatalf("corrupt frames at offset %d: %v", len(out), err)
		}
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

// splitWindows splits concatenated frames into windows, each ending with
// its end-of-window frame.
func splitWindows(t *testing.T, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	start := 0
	for off := 0; off < len(b); {
		n, err := event.FrameLen(b[off:])
		if err != nil || off+n > len(b) {
			t.Fatalf("corrupt frames at offset %d: %v", off, err)
		}
		h, _ := event.PeekHeader(b[off:])
		off += n
		if h.Kind == event.KindEndOfWindow {
			out = append(out, b[start:off])
			start = off
		}
	}
	if start != len(b) {
		t.Fatalf("log page ends inside a window (%d bytes after the last end-of-window frame)", len(b)-start)
	}
	return out
}

// ---- calls with checks ----

var ctx = context.Background()

func apply(t *testing.T, s store.Store, b *store.Batch) {
	t.Helper()
	if err := s.Apply(ctx, b); err != nil {
		t.Fatalf("Apply(after %d, %d windows): %v", b.After, len(b.Windows), err)
	}
}

func state(t *testing.T, s store.Store) store.State {
	t.Helper()
	st, err := s.State(ctx)
	if err != nil {
		t.Fatalf("State: %v", err)
	}
	return st
}

// checkState compares everything but the ID with the model.
func checkState(t *testing.T, s store.Store, m *model) store.State {
	t.Helper()
	st := state(t, s)
	want := m.state()
	want.ID = st.ID
	if st != want {
		t.Fatalf("State = %+v, want %+v", st, want)
	}
	return st
}

// readSnapshot pages through the whole snapshot at asOf with f and the
// given bounds, checking every page's bounds, order and cursor, and returns
// the rows' frames.
func readSnapshot(t *testing.T, s store.Store, asOf uint64, f *filter.Filter, maxRows, maxBytes int) [][]byte {
	t.Helper()
	var out [][]byte
	var after *store.Cursor
	for pages := 0; ; pages++ {
		if pages > 1_000_000 {
			t.Fatal("Snapshot paging does not end")
		}
		p, err := s.Snapshot(ctx, store.SnapshotQuery{AsOf: asOf, After: after, Filter: f, MaxRows: maxRows, MaxBytes: maxBytes})
		if err != nil {
			t.Fatalf("Snapshot(asOf %d, after %v): %v", asOf, after, err)
		}
		frames := splitFrames(t, p.Frames)
		if len(frames) != p.Rows {
			t.Fatalf("Snapshot page: Rows = %d, but it holds %d frames", p.Rows, len(frames))
		}
		if p.Rows > maxRows {
			t.Fatalf("Snapshot page of %d rows exceeds MaxRows %d", p.Rows, maxRows)
		}
		if p.Rows > 1 && len(p.Frames) > maxBytes {
			t.Fatalf("Snapshot page of %d rows and %d bytes exceeds MaxBytes %d", p.Rows, len(p.Frames), maxBytes)
		}
		if p.Rows == 0 && p.Next != nil {
			t.Fatalf("empty Snapshot page with Next %+v: a page holds at least one row when any remains", *p.Next)
		}
		for _, fr := range frames {
			h, _ := event.PeekHeader(fr)
			if after != nil && cmpRow(h.Source, h.Key, after.Source, after.Key) <= 0 {
				t.Fatalf("Snapshot row (%d, %x) is not after (%d, %x): wrong order or a row seen twice", h.Source, h.Key, after.Source, after.Key)
			}
			after = &store.Cursor{Source: h.Source, Key: slices.Clone(h.Key)}
			out = append(out, fr)
		}
		if p.Next == nil {
			return out
		}
		if after == nil || p.Next.Source != after.Source || !bytes.Equal(p.Next.Key, after.Key) {
			t.Fatalf("Snapshot Next = %+v, want the page's last row %+v", p.Next, after)
		}
		after = &store.Cursor{Source: p.Next.Source, Key: slices.Clone(p.Next.Key)}
	}
}

// checkSnapshot compares the paged snapshot with the model's and
// CountRows with its size.
func checkSnapshot(t *testing.T, s store.Store, m *model, asOf uint64, f *filter.Filter, maxRows, maxBytes int) {
	t.Helper()
	got := readSnapshot(t, s, asOf, f, maxRows, maxBytes)
	want := m.snapshot(asOf, f)
	for i := 0; i < len(got) || i < len(want); i++ {
		switch {
		case i >= len(got):
			t.Fatalf("Snapshot(asOf %d, filter %s) misses row %d (%d, %x) and %d more", asOf, fdesc(f), i, want[i].src, want[i].key, len(want)-i-1)
		case i >= len(want):
			h, _ := event.PeekHeader(got[i])
			t.Fatalf("Snapshot(asOf %d, filter %s) has an unexpected row %d (%d, %x scn %d) and %d more", asOf, fdesc(f), i, h.Source, h.Key, h.SCN, len(got)-i-1)
		case !bytes.Equal(got[i], want[i].frame):
			h, _ := event.PeekHeader(got[i])
			t.Fatalf("Snapshot(asOf %d, filter %s) row %d is (%d, %x scn %d), want (%d, %x scn %d)", asOf, fdesc(f), i, h.Source, h.Key, h.SCN, want[i].src, want[i].key, want[i].scn)
		}
	}
	n, err := s.CountRows(ctx, asOf, f)
	if err != nil {
		t.Fatalf("CountRows: %v", err)
	}
	if n != uint64(len(want)) {
		t.Fatalf("CountRows(asOf %d, filter %s) = %d, want %d", asOf, fdesc(f), n, len(want))
	}
}

func fdesc(f *filter.Filter) string {
	if f == nil {
		return "nil"
	}
	var src []uint32
	for s := range f.Sources {
		src = append(src, s)
	}
	slices.Sort(src)
	if f.Sources == nil {
		return fmt.Sprintf("{all sources, %q}", f.Partition.String())
	}
	return fmt.Sprintf("{sources %v, %q}", src, f.Partition.String())
}

// readLog pages through the log in (after, upTo] with f and maxBytes,
// checking every page, and returns the windows.
func readLog(t *testing.T, s store.Store, after, upTo uint64, f *filter.Filter, maxBytes int) [][]byte {
	t.Helper()
	var out [][]byte
	for pages := 0; ; pages++ {
		if pages > 1_000_000 {
			t.Fatal("Log paging does not end")
		}
		p, err := s.Log(ctx, store.LogQuery{After: after, UpTo: upTo, Filter: f, MaxBytes: maxBytes})
		if err != nil {
			t.Fatalf("Log(after %d, upTo %d): %v", after, upTo, err)
		}
		ws := splitWindows(t, p.Frames)
		if len(ws) != p.Windows {
			t.Fatalf("Log page: Windows = %d, but it holds %d windows", p.Windows, len(ws))
		}
		if p.Windows > 1 && len(p.Frames) > maxBytes {
			t.Fatalf("Log page of %d windows and %d bytes exceeds MaxBytes %d", p.Windows, len(p.Frames), maxBytes)
		}
		if p.Windows == 0 {
			if p.Last != after {
				t.Fatalf("empty Log page: Last = %d, want After %d", p.Last, after)
			}
			return out
		}
		last := after
		for _, w := range ws {
			h, _ := event.PeekHeader(w[len(w)-eowLen(t, w):])
			if h.SCN <= last || h.SCN > upTo {
				t.Fatalf("Log window %d out of order or range (after %d, previous %d, upTo %d)", h.SCN, after, last, upTo)
			}
			last = h.SCN
		}
		if p.Last != last {
			t.Fatalf("Log page: Last = %d, want the SCN of its last window %d", p.Last, last)
		}
		out = append(out, ws...)
		after = last
	}
}

// eowLen returns the length of the end-of-window frame that ends w.
func eowLen(t *testing.T, w []byte) int {
	fs := splitFrames(t, w)
	return len(fs[len(fs)-1])
}

func checkLog(t *testing.T, s store.Store, m *model, after, upTo uint64, f *filter.Filter, maxBytes int) {
	t.Helper()
	got := readLog(t, s, after, upTo, f, maxBytes)
	want := m.log(after, upTo, f)
	if len(got) != len(want) {
		t.Fatalf("Log(after %d, upTo %d, filter %s) returned %d windows, want %d", after, upTo, fdesc(f), len(got), len(want))
	}
	for i := range got {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("Log(after %d, upTo %d, filter %s) window %d differs: %d bytes, want %d", after, upTo, fdesc(f), i, len(got[i]), len(want[i]))
		}
	}
}

func purge(t *testing.T, s store.Store, p store.PurgePolicy) store.PurgeResult {
	t.Helper()
	r, err := s.Purge(ctx, p)
	if err != nil {
		t.Fatalf("Purge(%+v): %v", p, err)
	}
	return r
}

// checkPurge purges s and m alike and compares the results.
func checkPurge(t *testing.T, s store.Store, m *model, p store.PurgePolicy) {
	t.Helper()
	got := purge(t, s, p)
	want := m.purge(p)
	if got != want {
		t.Fatalf("Purge(log before %d, tombstones before %d) = %+v, want %+v", unixNano(p.LogBefore), unixNano(p.TombstonesBefore), got, want)
	}
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func notHeld(err error) (*store.NotHeldError, bool) {
	var nh *store.NotHeldError
	ok := errors.As(err, &nh)
	return nh, ok
}

// everything is the AsOf/UpTo that includes every SCN.
const everything = uint64(math.MaxUint64)

func mustPartition(t *testing.T, s string) filter.Partition {
	t.Helper()
	p, err := filter.ParsePartition(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func sources(ids ...uint32) map[uint32]struct{} {
	m := make(map[uint32]struct{}, len(ids))
	for _, id := range ids {
		m[id] = struct{}{}
	}
	return m
}

// decoded is a frame decoded with its length.
type decoded struct {
	event.Event
	n int
}

func decodeFrame(b []byte) (decoded, error) {
	e, n, err := event.Decode(b)
	if err != nil {
		return decoded{}, fmt.Errorf("corrupt frame: %w", err)
	}
	return decoded{e, n}, nil
}
