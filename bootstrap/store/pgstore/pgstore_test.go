package pgstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/filter"
	"github.com/databus-go/databus/internal/dbtest"
	"github.com/databus-go/databus/schema"
)

var bg = context.Background()

func ikey(v int64) []byte  { return event.AppendKeyInt(nil, v) }
func ukey(v uint64) []byte { return event.AppendKeyUint(nil, v) }
func skey(s string) []byte { return event.AppendKeyString(nil, s) }

// frame encodes a data frame.
func frame(t testing.TB, op event.Op, scn uint64, src uint32, key []byte, payload string) []byte {
	t.Helper()
	b, err := event.AppendFrame(nil, &event.Event{Kind: event.KindData, Op: op, SCN: scn, Timestamp: int64(scn) * 1e9, Source: src, SchemaVersion: 1, Key: key, Payload: []byte(payload)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// window builds a window of upserts (payload != "") and deletes (payload
// == "") with its log frames.
type change struct {
	src     uint32
	key     []byte
	payload string
}

func window(t testing.TB, scn uint64, changes ...change) store.Window {
	t.Helper()
	w := store.Window{SCN: scn, Timestamp: int64(scn) * 1e9}
	for _, c := range changes {
		if c.payload == "" {
			w.Frames = append(w.Frames, frame(t, event.OpDelete, scn, c.src, c.key, "")...)
			w.Rows = append(w.Rows, store.Row{Source: c.src, Key: c.key, SCN: scn, Op: store.RowDelete})
			continue
		}
		w.Frames = append(w.Frames, frame(t, event.OpUpdate, scn, c.src, c.key, c.payload)...)
		w.Rows = append(w.Rows, store.Row{Source: c.src, Key: c.key, SCN: scn, Op: store.RowUpsert, Frame: frame(t, event.OpInsert, scn, c.src, c.key, c.payload)})
	}
	eow := event.EndOfWindow(scn, w.Timestamp, uint32(len(changes)), "")
	var err error
	if w.Frames, err = event.AppendFrame(w.Frames, &eow); err != nil {
		t.Fatal(err)
	}
	return w
}

func mustState(t testing.TB, s *Store) store.State {
	t.Helper()
	st, err := s.State(bg)
	if err != nil {
		t.Fatalf("State: %v", err)
	}
	return st
}

func mustApply(t testing.TB, s *Store, b *store.Batch) {
	t.Helper()
	if err := s.Apply(bg, b); err != nil {
		t.Fatalf("Apply(after %d): %v", b.After, err)
	}
}

// snapshotRows pages through the whole snapshot and returns its frames.
func snapshotRows(t testing.TB, s *Store, asOf uint64, f *filter.Filter, maxRows, maxBytes int) [][]byte {
	t.Helper()
	var out [][]byte
	var after *store.Cursor
	for {
		p, err := s.Snapshot(bg, store.SnapshotQuery{AsOf: asOf, After: after, Filter: f, MaxRows: maxRows, MaxBytes: maxBytes})
		if err != nil {
			t.Fatalf("Snapshot: %v", err)
		}
		for b := p.Frames; len(b) > 0; {
			_, n := event.PeekHeader(b)
			out = append(out, b[:n:n])
			b = b[n:]
		}
		if p.Next == nil {
			return out
		}
		after = &store.Cursor{Source: p.Next.Source, Key: slices.Clone(p.Next.Key)}
	}
}

// TestSharedStore: every handle on one database and schema sees one store
// (one id, one head), also when they are opened at the same moment on a
// database where the store does not exist yet; another schema is another
// store.
func TestSharedStore(t *testing.T) {
	conn := freshDB(t)
	const n = 6
	stores := make([]*Store, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			stores[i], errs[i] = Open(bg, conn, Options{})
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent Open %d: %v", i, err)
		}
		t.Cleanup(func() { stores[i].Close() })
	}
	id := mustState(t, stores[0]).ID
	if len(id) != 32 {
		t.Fatalf("store id %q, want 32 hex digits", id)
	}
	for i, s := range stores {
		if got := mustState(t, s).ID; got != id || s.ID() != id {
			t.Fatalf("handle %d sees store id %q (ID() %q), handle 0 %q", i, got, s.ID(), id)
		}
	}

	mustApply(t, stores[1], &store.Batch{After: 7, Windows: []store.Window{window(t, 8, change{1, ikey(1), "a"})}})
	for i, s := range stores {
		st := mustState(t, s)
		if st.Head != 8 || st.HeadTime != 8e9 || st.LowWatermark != 7 || st.Windows != 1 || st.Empty {
			t.Fatalf("handle %d sees %+v after another handle's Apply", i, st)
		}
	}
	// The next batch must follow the shared head, whichever handle writes.
	if err := stores[2].Apply(bg, &store.Batch{After: 7, Windows: []store.Window{window(t, 9)}}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Apply(after 7) through another handle once the head is 8 = %v, want ErrConflict", err)
	}
	mustApply(t, stores[2], &store.Batch{After: 8, Windows: []store.Window{window(t, 9)}})
	if st := mustState(t, stores[0]); st.Head != 9 {
		t.Fatalf("head %d, want 9", st.Head)
	}

	other := open(t, conn, Options{Schema: "other"})
	if st := mustState(t, other); st.ID == id || !st.Empty {
		t.Fatalf("store in schema other = %+v, want a new empty store with its own id", st)
	}
}

// TestConcurrentProducers: two producers apply batches after the same head
// at the same moment, round after round: exactly one commits, the other
// gets ErrConflict, and nothing of the loser's batch (log, rows, schemas,
// seed progress) is visible.
func TestConcurrentProducers(t *testing.T) {
	conn := freshDB(t)
	a, b := open(t, conn, Options{}), open(t, conn, Options{})
	producers := []*Store{a, b}
	head := uint64(100)
	mustApply(t, a, &store.Batch{After: head})
	wins := [2]int{}
	for round := 0; round < 20; round++ {
		batches := make([]*store.Batch, 2)
		for p := range batches {
			// Both write the same SCNs; their rows, schemas and seeds
			// carry the producer's name.
			var ws []store.Window
			for i := uint64(1); i <= 3; i++ {
				var cs []change
				for k := 0; k < 100; k++ {
					cs = append(cs, change{1, ikey(int64(k)), fmt.Sprintf("p%d r%d", p, round)})
				}
				cs = append(cs, change{uint32(10 + p), ikey(int64(round)), "own"})
				ws = append(ws, window(t, head+i, cs...))
			}
			batches[p] = &store.Batch{
				After:   head,
				Windows: ws,
				Schemas: []schema.Table{{ID: uint32(10 + p), Name: fmt.Sprintf("db.p%d", p), Version: uint16(round + 1), Columns: []schema.Column{{Name: "id", Avro: schema.Primitive("long")}}, Key: []string{"id"}}},
				Seeds:   []store.SeedProgress{{Table: fmt.Sprintf("db.p%d", p), Run: fmt.Sprint(round), Rows: uint64(round)}},
			}
		}
		errs := make([]error, 2)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for p := range producers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				errs[p] = producers[p].Apply(bg, batches[p])
			}()
		}
		close(start)
		wg.Wait()
		winner := -1
		for p, err := range errs {
			switch {
			case err == nil && winner < 0:
				winner = p
			case err == nil:
				t.Fatalf("round %d: both producers committed a batch after head %d", round, head)
			case !errors.Is(err, store.ErrConflict):
				t.Fatalf("round %d: producer %d: %v, want nil or ErrConflict", round, p, err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: neither producer committed: %v", round, errs)
		}
		wins[winner]++
		loser := 1 - winner
		head += 3

		st := mustState(t, b)
		if st.Head != head || st.Windows != uint64(3*(round+1)) {
			t.Fatalf("round %d: state %+v, want head %d and %d windows", round, st, head, 3*(round+1))
		}
		lp, err := a.Log(bg, store.LogQuery{After: head - 3, UpTo: head, MaxBytes: 1 << 30})
		if err != nil {
			t.Fatal(err)
		}
		var want []byte
		for _, w := range batches[winner].Windows {
			want = append(want, w.Frames...)
		}
		if lp.Windows != 3 || !bytes.Equal(lp.Frames, want) {
			t.Fatalf("round %d: the log holds %d windows that are not the winner's", round, lp.Windows)
		}
		rows := snapshotRows(t, a, math.MaxUint64, nil, 1000, 1<<20)
		for _, r := range rows {
			h, _ := event.PeekHeader(r)
			if h.Source == uint32(10+loser) && bytes.Equal(h.Key, ikey(int64(round))) {
				t.Fatalf("round %d: the loser's row is in the snapshot", round)
			}
			e, _, err := event.Decode(r)
			if err != nil {
				t.Fatal(err)
			}
			if h.Source == 1 && string(e.Payload) != fmt.Sprintf("p%d r%d", winner, round) {
				t.Fatalf("round %d: row (1, %x) holds %q, want the winner's", round, h.Key, e.Payload)
			}
		}
		schemas, err := b.Schemas(bg)
		if err != nil {
			t.Fatal(err)
		}
		for _, sc := range schemas {
			if sc.ID == uint32(10+loser) && sc.Version == uint16(round+1) {
				t.Fatalf("round %d: the loser's schema is stored", round)
			}
		}
		seeds, err := b.Seeds(bg)
		if err != nil {
			t.Fatal(err)
		}
		for _, sd := range seeds {
			if sd.Table == fmt.Sprintf("db.p%d", loser) && sd.Run == fmt.Sprint(round) {
				t.Fatalf("round %d: the loser's seed progress is stored", round)
			}
		}
	}
	t.Logf("wins: %v", wins)
}

// TestApplyRefused: a batch that breaks the contract is refused with
// ErrBadBatch before anything is written.
func TestApplyRefused(t *testing.T) {
	s := open(t, freshDB(t), Options{})
	mustApply(t, s, &store.Batch{After: 10, Windows: []store.Window{window(t, 11, change{1, ikey(1), "a"})}})
	before := mustState(t, s)
	w12 := window(t, 12, change{1, ikey(2), "b"})
	badSCN := window(t, 12, change{1, ikey(3), "c"})
	badSCN.Rows[0].SCN = 13
	badFrame := window(t, 12, change{1, ikey(3), "c"})
	badFrame.Rows[0].Frame = badFrame.Rows[0].Frame[:len(badFrame.Rows[0].Frame)-1]
	badOp := window(t, 12, change{1, ikey(3), "c"})
	badOp.Rows[0].Op = 9
	huge := window(t, math.MaxInt64+1)
	for name, b := range map[string]*store.Batch{
		"not increasing":     {After: 11, Windows: []store.Window{w12, w12}},
		"not after After":    {After: 11, Windows: []store.Window{window(t, 11)}},
		"row of another SCN": {After: 11, Windows: []store.Window{badSCN}},
		"truncated frame":    {After: 11, Windows: []store.Window{badFrame}},
		"unknown op":         {After: 11, Windows: []store.Window{badOp}},
		"SCN above int64":    {After: 11, Windows: []store.Window{w12, huge}},
		"After above int64":  {After: math.MaxInt64 + 1},
	} {
		b.Schemas = []schema.Table{{ID: 1, Name: "db.t", Version: 1, Columns: []schema.Column{{Name: "id", Avro: schema.Primitive("long")}}, Key: []string{"id"}}}
		err := s.Apply(bg, b)
		if !errors.Is(err, ErrBadBatch) {
			t.Errorf("%s: Apply = %v, want ErrBadBatch", name, err)
		}
	}
	if st := mustState(t, s); st != before {
		t.Fatalf("refused batches changed the state: %+v, then %+v", before, st)
	}
	if sc, err := s.Schemas(bg); err != nil || len(sc) != 0 {
		t.Fatalf("refused batches stored schemas: %v, %v", sc, err)
	}
	if rows := snapshotRows(t, s, math.MaxUint64, nil, 10, 1<<20); len(rows) != 1 {
		t.Fatalf("refused batches changed the snapshot: %d rows", len(rows))
	}
}

// TestFilterPushDown compares filtered snapshots and counts with the
// filter applied in Go to every row, over keys whose MOD bucket SQL cannot
// compute (modhash NULL), RANGE bounds, string and composite keys.
func TestFilterPushDown(t *testing.T) {
	s := open(t, freshDB(t), Options{})
	keys := [][]byte{
		ikey(0), ikey(1), ikey(-1), ikey(7), ikey(-7), ikey(8), ikey(1000), ikey(-1000),
		ikey(math.MaxInt64), ikey(math.MinInt64), ikey(math.MinInt64 + 1),
		ukey(0), ukey(5), ukey(math.MaxInt64), ukey(math.MaxInt64 + 1), ukey(math.MaxUint64), ukey(1<<63 + 12345),
		skey(""), skey("a"), skey("b"), skey("ab"), skey("zzz"),
		append(ikey(1), skey("x")...), append(skey("x"), ikey(1)...),
		event.AppendKeyBytes(nil, []byte{0, 1, 2}), event.AppendKeyNull(nil),
	}
	var ws []store.Window
	scn := uint64(1)
	for _, src := range []uint32{1, 2, 3} {
		var cs []change
		for i, k := range keys {
			cs = append(cs, change{src, k, fmt.Sprintf("row %d of %d", i, src)})
		}
		ws = append(ws, window(t, scn, cs...))
		scn++
	}
	ws = append(ws, window(t, scn, change{2, ikey(7), ""}, change{3, ukey(math.MaxUint64), ""}))
	mustApply(t, s, &store.Batch{After: 0, Windows: ws})

	parts := []string{"", "mod:0/1", "mod:0/2", "mod:1/2", "mod:0,3/4", "mod:2/7", "mod:5,6/7", "mod:100/65536",
		"range:0-1", "range:-1000-8", "range:-9223372036854775808-0", "range:1-9223372036854775807", "range:-5-5,7-9,1000-1001"}
	for _, p := range parts {
		part, err := filter.ParsePartition(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, srcs := range [][]uint32{nil, {2}, {1, 3}, {}} {
			f := &filter.Filter{Partition: part}
			if srcs != nil {
				f.Sources = map[uint32]struct{}{}
				for _, id := range srcs {
					f.Sources[id] = struct{}{}
				}
			}
			for _, asOf := range []uint64{2, math.MaxUint64} {
				var want [][]byte
				for _, r := range snapshotRows(t, s, asOf, nil, 1000, 1<<20) {
					h, _ := event.PeekHeader(r)
					if f.Match(h) {
						want = append(want, r)
					}
				}
				for _, maxRows := range []int{1, 3, 1000} {
					got := snapshotRows(t, s, asOf, f, maxRows, 1<<20)
					if !slices.EqualFunc(got, want, bytes.Equal) {
						t.Fatalf("partition %q sources %v asOf %d MaxRows %d: %d rows, want %d", p, srcs, asOf, maxRows, len(got), len(want))
					}
				}
				n, err := s.CountRows(bg, asOf, f)
				if err != nil {
					t.Fatal(err)
				}
				if n != uint64(len(want)) {
					t.Fatalf("CountRows(partition %q, sources %v, asOf %d) = %d, want %d", p, srcs, asOf, n, len(want))
				}
			}
		}
	}
}

// TestSnapshotPageBytes: pages bounded by bytes hold as many rows as fit,
// whatever the frame-size estimate says, and Next is nil only on the last.
func TestSnapshotPageBytes(t *testing.T) {
	s := open(t, freshDB(t), Options{})
	var cs []change
	for k := 0; k < 300; k++ {
		cs = append(cs, change{1, ikey(int64(k)), strings.Repeat("x", 10+(k*37)%400)})
	}
	mustApply(t, s, &store.Batch{After: 0, Windows: []store.Window{window(t, 1, cs...)}})
	all := snapshotRows(t, s, 1, nil, 1000, 1<<20)
	if len(all) != 300 {
		t.Fatalf("%d rows, want 300", len(all))
	}
	for _, maxBytes := range []int{1, 500, 2000, 10000, 50000} {
		// Mislead the estimate both ways.
		for _, est := range []int64{1, 100000} {
			s.frameSize.Store(est)
			var after *store.Cursor
			i := 0
			for {
				p, err := s.Snapshot(bg, store.SnapshotQuery{AsOf: 1, After: after, MaxRows: 1000, MaxBytes: maxBytes})
				if err != nil {
					t.Fatal(err)
				}
				size := 0
				for j := 0; j < p.Rows; j++ {
					size += len(all[i+j])
				}
				if size != len(p.Frames) {
					t.Fatalf("page of %d rows from row %d holds %d bytes, want %d", p.Rows, i, len(p.Frames), size)
				}
				i += p.Rows
				if i < len(all) && p.Rows > 0 && len(p.Frames)+len(all[i]) <= maxBytes {
					t.Fatalf("MaxBytes %d (estimate %d): page ends at row %d with %d bytes, but the next row of %d bytes fits", maxBytes, est, i, len(p.Frames), len(all[i]))
				}
				if p.Next == nil {
					break
				}
				after = p.Next
			}
			if i != len(all) {
				t.Fatalf("MaxBytes %d: paging ended after %d rows of %d", maxBytes, i, len(all))
			}
		}
	}
}

// TestLogWhilePurging: a reader paging through the log while Purge raises
// the low watermark under it gets every window in order, or NotHeldError;
// never a gap.
func TestLogWhilePurging(t *testing.T) {
	conn := freshDB(t)
	w, r := open(t, conn, Options{}), open(t, conn, Options{})
	const n = 300
	var ws []store.Window
	for scn := uint64(1); scn <= n; scn++ {
		ws = append(ws, window(t, scn, change{1, ikey(int64(scn)), strings.Repeat("p", 100)}))
	}
	mustApply(t, w, &store.Batch{After: 0, Windows: ws})

	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for scn := int64(2); scn <= n; scn += 3 {
			if _, err := w.Purge(bg, store.PurgePolicy{LogBefore: time.Unix(scn, 0)}); err != nil {
				t.Error(err)
				return
			}
		}
		close(done)
	}()
	reads := 0
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true // one more pass after the last purge
		default:
		}
		st := mustState(t, r)
		after := st.LowWatermark
		for after < st.Head {
			p, err := r.Log(bg, store.LogQuery{After: after, UpTo: st.Head, MaxBytes: 2000})
			var nh *store.NotHeldError
			if errors.As(err, &nh) {
				if nh.LowWatermark <= after {
					t.Fatalf("NotHeldError %v with low watermark <= after", nh)
				}
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			reads++
			b := p.Frames
			for b2 := b; len(b2) > 0; {
				h, m := event.PeekHeader(b2)
				if h.Kind == event.KindEndOfWindow {
					if h.SCN != after+1 {
						t.Fatalf("log page after %d holds window %d: a gap", after, h.SCN)
					}
					after = h.SCN
				}
				b2 = b2[m:]
			}
			if p.Last != after {
				t.Fatalf("page Last %d, want %d", p.Last, after)
			}
		}
	}
	wg.Wait()
	t.Logf("%d pages read", reads)
}

// TestOpenOtherFormat: a store written by another version of the table
// layout is refused, not misread.
func TestOpenOtherFormat(t *testing.T) {
	conn := freshDB(t)
	s := open(t, conn, Options{Schema: "st"})
	s.Close()
	c, err := pgx.Connect(bg, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(bg)
	if _, err := c.Exec(bg, "UPDATE st.meta SET format = 2"); err != nil {
		t.Fatal(err)
	}
	_, err = Open(bg, conn, Options{Schema: "st"})
	if err == nil || !strings.Contains(err.Error(), "format 2") {
		t.Fatalf("Open of a format-2 store = %v, want an error naming format 2", err)
	}
}

// TestReadOnlyRole: a server whose role may only read opens an existing
// store and serves it (no DDL is attempted), and its Apply fails.
func TestReadOnlyRole(t *testing.T) {
	conn := freshDB(t)
	w := open(t, conn, Options{})
	mustApply(t, w, &store.Batch{After: 0, Windows: []store.Window{window(t, 1, change{1, ikey(1), "a"})}})
	c, err := pgx.Connect(bg, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(bg)
	role := fmt.Sprintf("reader_%d", dbSeq.Add(1))
	for _, stmt := range []string{
		"CREATE ROLE " + role + " LOGIN",
		"GRANT USAGE ON SCHEMA databus_bootstrap TO " + role,
		"GRANT SELECT ON ALL TABLES IN SCHEMA databus_bootstrap TO " + role,
	} {
		if _, err := c.Exec(bg, stmt); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(bg, conn)
		if err == nil {
			c.Exec(bg, "DROP OWNED BY "+role)
			c.Exec(bg, "DROP ROLE "+role)
			c.Close(bg)
		}
	})
	srvConn := strings.Replace(conn, "postgres@", role+"@", 1)
	r := open(t, srvConn, Options{})
	if st := mustState(t, r); st.ID != w.ID() || st.Head != 1 {
		t.Fatalf("read-only handle sees %+v", st)
	}
	if rows := snapshotRows(t, r, 1, nil, 10, 1<<20); len(rows) != 1 {
		t.Fatalf("read-only handle sees %d rows, want 1", len(rows))
	}
	if err := r.Apply(bg, &store.Batch{After: 1, Windows: []store.Window{window(t, 2)}}); err == nil {
		t.Fatal("Apply through a read-only role succeeded")
	}
}

// TestSchemasExact: schema definitions come back as they were given,
// byte for byte in their Avro JSON.
func TestSchemasExact(t *testing.T) {
	s := open(t, freshDB(t), Options{})
	tb := schema.Table{ID: 3, Name: "db.t", Version: 2, Key: []string{"id"}, Columns: []schema.Column{
		{Name: "id", Avro: schema.Primitive("long")},
		{Name: "d", Avro: json.RawMessage(`{"type":"bytes","logicalType":"decimal","scale":2,"precision":10}`), Nullable: true, SourceType: "decimal(10,2)"},
	}}
	mustApply(t, s, &store.Batch{After: 5, Schemas: []schema.Table{tb}})
	// A version already held is ignored, not replaced.
	changed := tb
	changed.Name = "db.changed"
	mustApply(t, s, &store.Batch{After: 5, Schemas: []schema.Table{changed}})
	got, err := s.Schemas(bg)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal([]schema.Table{tb})
	gotJSON, _ := json.Marshal(got)
	if !bytes.Equal(gotJSON, want) {
		t.Fatalf("Schemas = %s, want %s", gotJSON, want)
	}
}

// TestClosed: calls after Close fail, and a call that waits for a
// connection gives up when its context ends.
func TestClosed(t *testing.T) {
	conn := freshDB(t)
	s := open(t, conn, Options{MaxConns: 1})
	c, err := s.pool.acquire(bg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(bg, 50*time.Millisecond)
	defer cancel()
	if _, err := s.State(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("State while the only connection is taken = %v, want DeadlineExceeded", err)
	}
	s.pool.release(c)
	mustState(t, s)
	s.Close()
	if _, err := s.State(bg); !errors.Is(err, ErrClosed) {
		t.Fatalf("State after Close = %v, want the closed error", err)
	}
}

// TestSnapshotPlan: snapshot pages are ordered scans of the primary key,
// also for a MOD partition whose selectivity the planner underestimates
// (without enable_sort=off it picks a scan and sort of the whole table for
// every page once the table is large).
func TestSnapshotPlan(t *testing.T) {
	conn := freshDB(t)
	s := open(t, conn, Options{})
	c, err := pgx.Connect(bg, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(bg)
	if _, err := c.Exec(bg, `INSERT INTO databus_bootstrap.snapshot (source, key, scn, ts, deleted, ikey, modhash, frame)
		SELECT 1 + g % 3, '\x01'::bytea || int8send(g), 1, 0, false, g, g, '\x00' FROM generate_series(1, 30000) g;
		ANALYZE databus_bootstrap.snapshot`); err != nil {
		t.Fatal(err)
	}
	explain := func(q interface {
		Query(context.Context, string, ...any) (pgx.Rows, error)
	}, f *filter.Filter) string {
		sql, args := s.snapshotSQL(f)
		args = append([]any{int64(1), ikey(500), int64(math.MaxInt64), 10001}, args...)
		var plan strings.Builder
		// Seven runs: the plan of a prepared statement may turn generic
		// after five.
		for i := 0; i < 7; i++ {
			plan.Reset()
			rows, err := q.Query(bg, "EXPLAIN "+sql, args...)
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var line string
				if err := rows.Scan(&line); err != nil {
					t.Fatal(err)
				}
				plan.WriteString(line + "\n")
			}
			rows.Close()
		}
		return plan.String()
	}
	sc, err := s.pool.acquire(bg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.pool.release(sc)
	for _, spec := range []string{"mod:1/4", "mod:0,1,2/3", "range:0-100000", "range:5-6"} {
		part, err := filter.ParsePartition(spec)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range []*filter.Filter{{Partition: part}, {Partition: part, Sources: map[uint32]struct{}{1: {}, 3: {}}}} {
			plan := explain(sc, f)
			if strings.Contains(plan, "Sort") || !strings.Contains(plan, "snapshot_pkey") {
				t.Fatalf("snapshot page plan for %s sorts or does not scan the primary key:\n%s", spec, plan)
			}
			if spec == "mod:1/4" && f.Sources == nil {
				t.Logf("plan:\n%s\nplan without enable_sort=off:\n%s", plan, explain(c, f))
			}
		}
	}
}

// TestFlushSplit: a batch whose rows take several upsert statements (and a
// truncate between them) folds exactly as one statement would.
func TestFlushSplit(t *testing.T) {
	defer func(n int) { flushBytes = n }(flushBytes)
	flushBytes = 1000 // a few rows per statement
	s := open(t, freshDB(t), Options{})
	var cs []change
	for k := 0; k < 200; k++ {
		cs = append(cs, change{1 + uint32(k%2), ikey(int64(k % 150)), fmt.Sprintf("v%d", k)})
	}
	w1 := window(t, 1, cs...)
	w2 := window(t, 2, change{1, ikey(3), "kept"}, change{2, ikey(4), ""})
	w2.Rows = append(w2.Rows, store.Row{Source: 2, SCN: 2, Op: store.RowTruncate})
	w2b := window(t, 2, change{2, ikey(5), "after truncate"})
	w2.Rows = append(w2.Rows, w2b.Rows...)
	mustApply(t, s, &store.Batch{After: 0, Windows: []store.Window{w1, w2}})

	// The expected rows, folded by hand: source 1 holds its even keys
	// with their last version (3 replaced in window 2); source 2 only the
	// row written after its truncate.
	want := map[string]string{}
	for k := 0; k < 200; k++ {
		if k%2 == 0 {
			want[string(ikey(int64(k%150)))] = fmt.Sprintf("v%d", k)
		}
	}
	want[string(ikey(3))] = "kept"
	got := map[string]string{}
	for _, r := range snapshotRows(t, s, math.MaxUint64, nil, 1000, 1<<20) {
		e, _, err := event.Decode(r)
		if err != nil {
			t.Fatal(err)
		}
		if e.Source == 2 {
			if !bytes.Equal(e.Key, ikey(5)) || string(e.Payload) != "after truncate" || e.SCN != 2 {
				t.Fatalf("source 2 holds (%x, %q, scn %d), want only key 5 written after the truncate", e.Key, e.Payload, e.SCN)
			}
			continue
		}
		got[string(e.Key)] = string(e.Payload)
	}
	if len(got) != len(want) {
		t.Fatalf("source 1 holds %d rows, want %d", len(got), len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("row %x holds %q, want %q", k, got[k], v)
		}
	}
}

// TestServerRestart: after the server restarts (every pooled session
// dies), reads succeed at once on new connections, and the producer's next
// Apply either commits or fails cleanly, never half.
func TestServerRestart(t *testing.T) {
	srv := dbtest.Postgres(t)
	srv.DB(t, "boot")
	s := open(t, srv.ConnString("boot"), Options{MaxConns: 3})
	mustApply(t, s, &store.Batch{After: 0, Windows: []store.Window{window(t, 1, change{1, ikey(1), "a"})}})
	// Three idle connections, all killed by the restart.
	idle := func() {
		var cs []*conn
		for range 3 {
			c, err := s.pool.acquire(bg)
			if err != nil {
				t.Fatal(err)
			}
			cs = append(cs, c)
		}
		for _, c := range cs {
			s.pool.release(c)
		}
	}
	idle()
	srv.Restart(t)
	if st := mustState(t, s); st.Head != 1 {
		t.Fatalf("head %d after restart, want 1", st.Head)
	}
	if rows := snapshotRows(t, s, 1, nil, 10, 1<<20); len(rows) != 1 {
		t.Fatalf("%d rows after restart, want 1", len(rows))
	}
	idle()
	srv.Restart(t)
	b := &store.Batch{After: 1, Windows: []store.Window{window(t, 2, change{1, ikey(2), "b"})}}
	if err := s.Apply(bg, b); err != nil {
		t.Logf("first Apply after a restart: %v", err)
		if st := mustState(t, s); st.Head != 1 {
			t.Fatalf("a failed Apply moved the head to %d", st.Head)
		}
		mustApply(t, s, b)
	}
	if st := mustState(t, s); st.Head != 2 || st.Windows != 2 {
		t.Fatalf("state %+v, want head 2 and 2 windows", st)
	}
}
