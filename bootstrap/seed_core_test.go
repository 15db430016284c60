package bootstrap

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
)

// The tests in this file drive the pure core (convertWindow and the
// watermark state machine) with hand-built frames: no clock, no I/O.

const (
	srcT  = 7 // the seeded table
	srcWM = 9 // the watermark table
	srcU  = 8 // another table
)

var tableT = schema.Table{ID: srcT, Name: "app.t", Version: 1, Key: []string{"id"},
	Columns: []schema.Column{{Name: "id", Avro: schema.Primitive("long")}, {Name: "v", Avro: schema.Primitive("string")}}}

// win builds the frames of one window: each item is an *event.Event (data,
// SCN and timestamp filled in) or an event.SchemaChange.
type win struct {
	scn    uint64
	ts     int64
	frames []byte
	data   int
	marks  map[int]string
}

func newWin(scn uint64) *win { return &win{scn: scn, ts: int64(scn) * 1000} }

func (w *win) add(t *testing.T, e event.Event) *win {
	t.Helper()
	e.Kind, e.SCN, e.Timestamp = event.KindData, w.scn, w.ts
	var err error
	if w.frames, err = event.AppendFrame(w.frames, &e); err != nil {
		t.Fatal(err)
	}
	w.data++
	return w
}

func (w *win) mark(t *testing.T, m string) *win {
	t.Helper()
	if w.marks == nil {
		w.marks = map[int]string{}
	}
	w.marks[w.data] = m
	return w.add(t, event.Event{Op: event.OpInsert, Source: srcWM, SchemaVersion: 1, Key: event.AppendKeyString(nil, "app.t"), Payload: []byte(m)})
}

func (w *win) change(t *testing.T, sc event.SchemaChange) *win {
	t.Helper()
	e, err := event.NewSchemaChange(w.scn, w.ts, sc)
	if err != nil {
		t.Fatal(err)
	}
	if w.frames, err = event.AppendFrame(w.frames, &e); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *win) end(t *testing.T) []byte {
	t.Helper()
	e := event.EndOfWindow(w.scn, w.ts, uint32(w.data), "tx")
	b, err := event.AppendFrame(append([]byte(nil), w.frames...), &e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func key(id int64) []byte { return event.AppendKeyInt(nil, id) }

func ins(src uint32, id int64, payload string) event.Event {
	return event.Event{Op: event.OpInsert, Source: src, SchemaVersion: 1, Key: key(id), Payload: []byte(payload)}
}

// decodeAll decodes a window's frames, checking the end-of-window count as
// an unfiltered consumer does.
func decodeAll(t *testing.T, b []byte) []event.Event {
	t.Helper()
	var out []event.Event
	data := 0
	for len(b) > 0 {
		e, n, err := event.Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		b = b[n:]
		out = append(out, e)
		if e.Kind == event.KindData {
			data++
		}
		if e.Kind == event.KindEndOfWindow {
			if len(b) != 0 {
				t.Fatal("frames after the end-of-window frame")
			}
			if c, _, _ := e.WindowInfo(); int(c) != data {
				t.Fatalf("end-of-window count %d, window has %d data events", c, data)
			}
		}
	}
	return out
}

func TestConvertWindow(t *testing.T) {
	w := newWin(100)
	w.add(t, ins(srcT, 1, "one"))
	w.add(t, event.Event{Op: event.OpUpdate, Source: srcT, SchemaVersion: 2, Key: key(2), Payload: []byte("two'"), Before: []byte("two"), HasBefore: true})
	w.add(t, event.Event{Op: event.OpInsert, Source: srcT, SchemaVersion: 1, Key: key(3), Payload: []byte("three"), Before: []byte{}, HasBefore: true})
	w.change(t, event.SchemaChange{Source: srcU, Name: "app.u", Version: 1, Key: []string{"id"}, Avro: json.RawMessage(`{}`), DDL: "truncate", Truncate: true})
	w.add(t, event.Event{Op: event.OpDelete, Source: srcT, SchemaVersion: 1, Key: key(1), Before: []byte("one"), HasBefore: true})
	w.add(t, ins(srcU, 5, "five"))
	frames := w.end(t)

	pw, _, _, err := convertWindow(100, frames, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pw.w.Frames, frames) || pw.w.SCN != 100 || pw.w.Timestamp != 100000 || pw.events != 5 {
		t.Fatalf("window %d ts %d events %d; frames equal %v", pw.w.SCN, pw.w.Timestamp, pw.events, bytes.Equal(pw.w.Frames, frames))
	}
	want := []struct {
		op      store.RowOp
		source  uint32
		key     int64 // -1: none
		payload string
		version uint16
	}{
		{store.RowUpsert, srcT, 1, "one", 1},
		{store.RowUpsert, srcT, 2, "two'", 2},
		{store.RowUpsert, srcT, 3, "three", 1},
		{store.RowTruncate, srcU, -1, "", 0},
		{store.RowDelete, srcT, 1, "", 0},
		{store.RowUpsert, srcU, 5, "five", 1},
	}
	if len(pw.w.Rows) != len(want) {
		t.Fatalf("%d rows, want %d", len(pw.w.Rows), len(want))
	}
	for i, r := range pw.w.Rows {
		wt := want[i]
		if r.Op != wt.op || r.Source != wt.source || r.SCN != 100 {
			t.Errorf("row %d: op %d source %d scn %d, want op %d source %d", i, r.Op, r.Source, r.SCN, wt.op, wt.source)
		}
		if wt.key >= 0 && !bytes.Equal(r.Key, key(wt.key)) || wt.key < 0 && r.Key != nil {
			t.Errorf("row %d: key %x", i, r.Key)
		}
		if r.Op != store.RowUpsert {
			if r.Frame != nil {
				t.Errorf("row %d: %d has a frame", i, r.Op)
			}
			continue
		}
		e, n, err := event.Decode(r.Frame)
		if err != nil || n != len(r.Frame) {
			t.Fatalf("row %d: frame: %v (%d of %d bytes)", i, err, n, len(r.Frame))
		}
		if e.Kind != event.KindData || e.Op != event.OpInsert || e.HasBefore || e.SCN != 100 || e.Timestamp != 100000 ||
			e.Source != wt.source || e.SchemaVersion != wt.version || string(e.Payload) != wt.payload || !bytes.Equal(e.Key, key(wt.key)) {
			t.Errorf("row %d: frame is %+v", i, e)
		}
	}
	// A plain insert's frame is the relay's frame itself, not a copy.
	if &pw.w.Rows[0].Frame[0] != &frames[0] {
		t.Error("the first insert's frame was copied")
	}
}

func TestConvertWindowCorrupt(t *testing.T) {
	frames := newWin(5).add(t, ins(srcT, 1, "x")).end(t)
	for name, b := range map[string][]byte{
		"flipped":   func() []byte { c := bytes.Clone(frames); c[60] ^= 1; return c }(),
		"no end":    frames[:len(frames)-event.HeaderSize-6],
		"other scn": newWin(6).add(t, ins(srcT, 1, "x")).end(t),
	} {
		var wm watermarks
		wm.pending = map[string]*chunk{"r:x.1": {key: "r:x.1", t: tableT, state: chunkWatching, seen: map[string]struct{}{}, done: make(chan struct{})}}
		wm.sealed = map[*chunk]struct{}{}
		if _, err := wm.convertLocked(5, b, nil); err == nil {
			t.Errorf("%s: no error", name)
		}
		if len(wm.pending["r:x.1"].seen) != 0 {
			t.Errorf("%s: a corrupt window changed the watermark state", name)
		}
	}
}

// scenario is a chunk of tableT with rows 1..n registered as "r:x.1".
type scenario struct {
	wm watermarks
	c  *chunk
}

func newScenario(n int) *scenario {
	s := &scenario{}
	s.wm.pending = map[string]*chunk{}
	s.wm.sealed = map[*chunk]struct{}{}
	s.c = &chunk{key: "r:x.1", t: tableT, state: chunkRegistered, done: make(chan struct{})}
	s.wm.pending[s.c.key] = s.c
	for i := 1; i <= n; i++ {
		s.c.rows = append(s.c.rows, event.Event{Kind: event.KindData, Op: event.OpInsert, Source: srcT, SchemaVersion: 1,
			Key: key(int64(i)), Payload: []byte{'s', byte('0' + i)}})
	}
	s.c.hasRows = true
	s.c.progress = store.SeedProgress{Table: "app.t", Run: "r", Cursor: "c1", Rows: uint64(n)}
	return s
}

func (s *scenario) feed(t *testing.T, w *win) *pendingWindow {
	t.Helper()
	pw, err := s.wm.convertLocked(w.scn, w.end(t), w.marks)
	if err != nil {
		t.Fatal(err)
	}
	return pw
}

func isDone(c *chunk) bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func TestWatermarkChunk(t *testing.T) {
	s := newScenario(4)
	s.feed(t, newWin(10).add(t, ins(srcT, 3, "before L"))) // before L: not watched
	s.feed(t, newWin(11).mark(t, "r:x.1:L"))
	if s.c.state != chunkWatching {
		t.Fatalf("state %d after L", s.c.state)
	}
	s.feed(t, newWin(12).add(t, event.Event{Op: event.OpUpdate, Source: srcT, SchemaVersion: 1, Key: key(2), Payload: []byte("new 2")}).
		add(t, ins(srcU, 1, "other table, same key")))
	s.feed(t, newWin(13).add(t, event.Event{Op: event.OpDelete, Source: srcT, SchemaVersion: 1, Key: key(4)}))
	pw := s.feed(t, newWin(14).mark(t, "r:x.1:H"))

	if s.c.state != chunkSealed || len(pw.sealed) != 1 || len(pw.seeds) != 1 || pw.seeds[0].Cursor != "c1" {
		t.Fatalf("state %d, sealed %d, seeds %+v", s.c.state, len(pw.sealed), pw.seeds)
	}
	if _, ok := s.wm.pending[s.c.key]; ok {
		t.Error("a sealed chunk is still pending")
	}
	// Rows 2 (updated) and 4 (deleted) after L are dropped; 1 and 3 are
	// appended before the end-of-window frame, with H's SCN and time.
	evs := decodeAll(t, pw.w.Frames)
	var got []string
	for _, e := range evs {
		if e.Kind == event.KindData && e.Source == srcT {
			if e.SCN != 14 || e.Timestamp != 14000 || e.Op != event.OpInsert || e.HasBefore {
				t.Errorf("seeded frame %+v", e)
			}
			got = append(got, string(e.Payload))
		}
	}
	if want := []string{"s1", "s3"}; !equalStrings(got, want) {
		t.Errorf("seeded rows %q, want %q", got, want)
	}
	if evs[0].Source != srcWM || evs[len(evs)-1].Kind != event.KindEndOfWindow {
		t.Error("the window's own frames must come first and the end-of-window frame last")
	}
	if _, txid, _ := evs[len(evs)-1].WindowInfo(); txid != "tx" {
		t.Errorf("txid %q", txid)
	}
	if len(pw.w.Rows) != 3 || pw.events != 3 || pw.w.Rows[1].Op != store.RowUpsert || !bytes.Equal(pw.w.Rows[1].Key, key(1)) {
		t.Fatalf("rows %+v, events %d", pw.w.Rows, pw.events)
	}
	if e, _, err := event.Decode(pw.w.Rows[2].Frame); err != nil || string(e.Payload) != "s3" || e.SCN != 14 {
		t.Errorf("seeded snapshot row: %+v %v", e, err)
	}
	if isDone(s.c) {
		t.Error("done before the commit")
	}
}

func TestWatermarkVoid(t *testing.T) {
	truncate := event.SchemaChange{Source: srcT, Name: "app.t", Version: 1, Key: []string{"id"}, Avro: json.RawMessage(`{}`), DDL: "truncate", Truncate: true}
	alter := event.SchemaChange{Source: srcT, Name: "app.t", Version: 2, Key: []string{"id"}, Avro: json.RawMessage(`{}`), DDL: "alter"}
	for name, windows := range map[string]func(t *testing.T) []*win{
		"truncate between L and H": func(t *testing.T) []*win {
			return []*win{newWin(1).mark(t, "r:x.1:L"), newWin(2).change(t, truncate), newWin(3).mark(t, "r:x.1:H")}
		},
		"alter between L and H": func(t *testing.T) []*win {
			return []*win{newWin(1).mark(t, "r:x.1:L"), newWin(2).change(t, alter), newWin(3).mark(t, "r:x.1:H")}
		},
		"alter after H in its window": func(t *testing.T) []*win {
			return []*win{newWin(1).mark(t, "r:x.1:L"), newWin(3).mark(t, "r:x.1:H").change(t, alter)}
		},
		"H without L": func(t *testing.T) []*win {
			return []*win{newWin(3).mark(t, "r:x.1:H")}
		},
	} {
		t.Run(name, func(t *testing.T) {
			s := newScenario(2)
			var last *pendingWindow
			for _, w := range windows(t) {
				last = s.feed(t, w)
			}
			if s.c.state != chunkVoid || !isDone(s.c) || len(s.wm.pending) != 0 {
				t.Errorf("state %d, done %v, pending %d: want void", s.c.state, isDone(s.c), len(s.wm.pending))
			}
			if len(last.sealed) != 0 || len(last.seeds) != 0 {
				t.Error("a void chunk was sealed")
			}
			for _, e := range decodeAll(t, last.w.Frames) {
				if e.Kind == event.KindData && e.Source == srcT {
					t.Errorf("a void chunk's row reached the window: %+v", e)
				}
			}
		})
	}
}

func TestWatermarkIgnoresUnknownMarks(t *testing.T) {
	s := newScenario(1)
	for i, m := range []string{"other:x.1:L", "r:x.2:H", "r:x.1", "garbage", "r:x.1:Z"} {
		w := newWin(uint64(i+1)).mark(t, m)
		frames := w.end(t)
		pw := s.feed(t, w)
		if !bytes.Equal(pw.w.Frames, frames) {
			t.Errorf("mark %q changed the window", m)
		}
	}
	if s.c.state != chunkRegistered {
		t.Errorf("state %d, want registered", s.c.state)
	}
	// A second L does not reset what the chunk has seen.
	s.feed(t, newWin(10).mark(t, "r:x.1:L"))
	s.feed(t, newWin(11).add(t, ins(srcT, 1, "changed")))
	s.feed(t, newWin(12).mark(t, "r:x.1:L"))
	pw := s.feed(t, newWin(13).mark(t, "r:x.1:H"))
	if s.c.state != chunkSealed || pw.events != 1 {
		t.Errorf("state %d, events %d: the row changed after the first L must be dropped", s.c.state, pw.events)
	}
}

func TestWatermarkVoidAll(t *testing.T) {
	s := newScenario(1)
	s.feed(t, newWin(1).mark(t, "r:x.1:L"))
	s.feed(t, newWin(2).mark(t, "r:x.1:H"))
	other := &chunk{key: "r:x.2", t: tableT, state: chunkRegistered, done: make(chan struct{})}
	s.wm.pending[other.key] = other
	if n := s.wm.voidAllLocked(); n != 2 {
		t.Errorf("voided %d chunks, want 2", n)
	}
	if s.c.state != chunkVoid || other.state != chunkVoid || !isDone(s.c) || !isDone(other) || len(s.wm.sealed)+len(s.wm.pending) != 0 {
		t.Error("voidAll left a chunk alive")
	}
	if n := s.wm.voidAllLocked(); n != 0 {
		t.Errorf("voided %d chunks twice", n)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
