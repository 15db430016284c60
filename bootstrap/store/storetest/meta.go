package storetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/schema"
)

// testSchemaSet is schema versions in the order they are added, which is
// not the order Schemas returns them in.
func testSchemaSet() []schema.Table {
	tbl := func(id uint32, name string, version uint16, extra ...schema.Column) schema.Table {
		cols := append([]schema.Column{
			{Name: "id", Avro: schema.Primitive("long"), SourceType: "bigint"},
			{Name: "name", Avro: schema.Primitive("string"), Nullable: true, SourceType: "varchar(20)"},
		}, extra...)
		return schema.Table{ID: id, Name: name, Version: version, Columns: cols, Key: []string{"id"}}
	}
	return []schema.Table{
		tbl(2, "db.b", 1),
		tbl(1, "db.a", 2, schema.Column{Name: "born", Avro: json.RawMessage(`{"type": "int", "logicalType": "date"}`), Nullable: true, SourceType: "date"}),
		tbl(1, "db.a", 1),
		tbl(3, "db.c", 1, schema.Column{Name: "amount", Avro: json.RawMessage(`{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}`), SourceType: "decimal(10,2)"}),
		tbl(1, "db.a", 3),
	}
}

// sameJSON compares two values by their JSON, as JSON values, so that a
// store may re-encode embedded JSON.
func sameJSON(t *testing.T, a, b any) bool {
	t.Helper()
	norm := func(v any) any {
		j, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var out any
		if err := json.Unmarshal(j, &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	return reflect.DeepEqual(norm(a), norm(b))
}

// checkSchemas checks that s holds exactly want, ordered by source, then
// version.
func checkSchemas(t *testing.T, s store.Store, want []schema.Table) {
	t.Helper()
	got, err := s.Schemas(ctx)
	if err != nil {
		t.Fatalf("Schemas: %v", err)
	}
	sorted := append([]schema.Table(nil), want...)
	for i := 1; i < len(sorted); i++ {
		for j := i; j > 0 && (sorted[j].ID < sorted[j-1].ID || sorted[j].ID == sorted[j-1].ID && sorted[j].Version < sorted[j-1].Version); j-- {
			sorted[j], sorted[j-1] = sorted[j-1], sorted[j]
		}
	}
	if len(got) != len(sorted) {
		t.Fatalf("Schemas returned %d versions, want %d", len(got), len(sorted))
	}
	for i := range got {
		if !sameJSON(t, got[i], sorted[i]) {
			gj, _ := json.Marshal(got[i])
			wj, _ := json.Marshal(sorted[i])
			t.Fatalf("Schemas[%d] = %s, want %s", i, gj, wj)
		}
	}
}

func testSchemas(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	all := testSchemaSet()
	apply(t, s, &store.Batch{After: 5, Schemas: all[:3]})
	checkSchemas(t, s, all[:3])
	// Versions already held are ignored, whatever they say now; a
	// duplicate inside one batch is harmless.
	changed := all[0]
	changed.Name = "db.renamed"
	changed.Columns = changed.Columns[:1]
	apply(t, s, &store.Batch{After: 5, Windows: []store.Window{newWin(6).window()}, Schemas: []schema.Table{changed, all[3], all[3], all[4], all[1]}})
	checkSchemas(t, s, all)
	apply(t, s, &store.Batch{After: 6, Schemas: all})
	checkSchemas(t, s, all)
}

// seed builds a seed progress record with times at microsecond precision.
func seed(table, run string, rows uint64, done bool) store.SeedProgress {
	started := time.Date(2026, 3, 1, 12, 0, 0, 123456000, time.UTC)
	return store.SeedProgress{Table: table, Run: run, Cursor: fmt.Sprintf(`{"id":%d}`, rows), Rows: rows, Done: done,
		Started: started, Updated: started.Add(time.Duration(rows) * time.Millisecond)}
}

// checkSeeds checks that s holds exactly want (in Table order).
func checkSeeds(t *testing.T, s store.Store, want []store.SeedProgress) {
	t.Helper()
	got, err := s.Seeds(ctx)
	if err != nil {
		t.Fatalf("Seeds: %v", err)
	}
	if len(got) != len(want) {
		t.Fatalf("Seeds returned %d records %+v, want %d %+v", len(got), got, len(want), want)
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Table != w.Table || g.Run != w.Run || g.Cursor != w.Cursor || g.Rows != w.Rows || g.Done != w.Done ||
			!g.Started.Equal(w.Started) || !g.Updated.Equal(w.Updated) {
			t.Fatalf("Seeds[%d] = %+v, want %+v", i, g, w)
		}
	}
}

func testSeeds(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	apply(t, s, &store.Batch{After: 1, Seeds: []store.SeedProgress{seed("shop.orders", "r1", 0, false), seed("shop.items", "r1", 5, false)}})
	// Seeds come back ordered by table name.
	checkSeeds(t, s, []store.SeedProgress{seed("shop.items", "r1", 5, false), seed("shop.orders", "r1", 0, false)})
	apply(t, s, &store.Batch{After: 1, Windows: []store.Window{newWin(2).upsert(1, ikey(1), "seeded").window()},
		Seeds: []store.SeedProgress{seed("shop.orders", "r1", 1000, false)}})
	checkSeeds(t, s, []store.SeedProgress{seed("shop.items", "r1", 5, false), seed("shop.orders", "r1", 1000, false)})
	// A new run replaces the record; a zero time and an empty cursor
	// survive.
	fresh := store.SeedProgress{Table: "shop.items", Run: "r2"}
	apply(t, s, &store.Batch{After: 2, Seeds: []store.SeedProgress{fresh, seed("a.first", "x", 1<<40, true)}})
	checkSeeds(t, s, []store.SeedProgress{seed("a.first", "x", 1<<40, true), fresh, seed("shop.orders", "r1", 1000, false)})
}

func testReopen(t *testing.T, h Harness) {
	s, reopen := handles{h}.open(t)
	m := logStore(t, s)
	schemas := testSchemaSet()
	seeds := []store.SeedProgress{seed("db.a", "r", 7, true)}
	apply(t, s, &store.Batch{After: m.head, Schemas: schemas, Seeds: seeds})
	checkPurge(t, s, m, store.PurgePolicy{LogBefore: at(14).Add(1), TombstonesBefore: at(13)})
	before := checkState(t, s, m)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s2 := reopen(t)
	if st := checkState(t, s2, m); st.ID != before.ID {
		t.Fatalf("ID changed across reopen: %q, then %q", before.ID, st.ID)
	}
	checkSnapshot(t, s2, m, everything, nil, 1000, 1<<20)
	checkSnapshot(t, s2, m, 20, nil, 3, 1<<20)
	checkLog(t, s2, m, m.lw, everything, nil, 1<<20)
	checkSchemas(t, s2, schemas)
	checkSeeds(t, s2, seeds)
	checkTombstones(t, s2, m)
	b := &store.Batch{After: m.head, Windows: []store.Window{newWin(m.head+1).upsert(1, ikey(1), "after reopen").window()}}
	apply(t, s2, b)
	m.apply(b)
	checkState(t, s2, m)
	checkSnapshot(t, s2, m, everything, nil, 1000, 1<<20)
}

func testTwoHandles(t *testing.T, h Harness) {
	s1, reopen := handles{h}.open(t)
	s2 := reopen(t)
	m := newModel()
	b := &store.Batch{After: 0, Windows: []store.Window{newWin(1).upsert(1, ikey(1), "from s1").window()}}
	apply(t, s1, b)
	m.apply(b)
	if a, b := state(t, s1).ID, state(t, s2).ID; a != b {
		t.Fatalf("two handles on one store have IDs %q and %q", a, b)
	}
	checkState(t, s2, m)
	checkSnapshot(t, s2, m, everything, nil, 10, 1<<20)
	if err := s2.Apply(ctx, &store.Batch{After: 0, Windows: []store.Window{newWin(1).upsert(1, ikey(2), "stale").window()}}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Apply on a second handle after a stale head = %v, want ErrConflict", err)
	}
	// Two producers racing from one head: exactly one wins.
	for round := uint64(1); round <= 5; round++ {
		head := m.head
		batches := []*store.Batch{
			{After: head, Windows: []store.Window{newWin(head+1).upsert(1, ikey(int64(round)), "s1").window()}},
			{After: head, Windows: []store.Window{newWin(head+2).upsert(1, ikey(int64(round)), "s2").window()}},
		}
		var errs [2]error
		var wg sync.WaitGroup
		for i, s := range []store.Store{s1, s2} {
			wg.Go(func() { errs[i] = s.Apply(ctx, batches[i]) })
		}
		wg.Wait()
		switch {
		case errs[0] == nil && errors.Is(errs[1], store.ErrConflict):
			m.apply(batches[0])
		case errs[1] == nil && errors.Is(errs[0], store.ErrConflict):
			m.apply(batches[1])
		default:
			t.Fatalf("two Applies from head %d returned %v and %v, want one success and one ErrConflict", head, errs[0], errs[1])
		}
		checkState(t, s1, m)
		checkState(t, s2, m)
		checkSnapshot(t, s1, m, everything, nil, 10, 1<<20)
		checkLog(t, s2, m, 0, everything, nil, 1<<20)
	}
}

// testConcurrentReader applies batches of three windows, each window
// rewriting a third of the keys with the batch's number, while readers
// check that they only ever see whole batches.
func testConcurrentReader(t *testing.T, h Harness) {
	s, reopen := handles{h}.open(t)
	other := reopen(t) // a reader through another handle, as another server would be
	const (
		batches = 40
		keys    = 30
	)
	payload := func(batch int) string { return fmt.Sprintf("batch %04d", batch) }
	done := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var readerErr error
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if readerErr == nil {
			readerErr = err
		}
	}
	reader := func(r store.Store) {
		defer wg.Done()
		for reads := 0; ; reads++ {
			select {
			case <-done:
				if reads > 0 {
					return
				}
			default:
			}
			if err := readOnce(r, keys, payload); err != nil {
				fail(err)
				return
			}
		}
	}
	wg.Add(2)
	go reader(s)
	go reader(other)

	for i := range batches {
		b := &store.Batch{After: uint64(3 * i)}
		for j := range 3 {
			w := newWin(uint64(3*i + j + 1))
			for k := j * keys / 3; k < (j+1)*keys/3; k++ {
				w.upsert(1, ikey(int64(k)), payload(i))
			}
			b.Windows = append(b.Windows, w.window())
		}
		if err := s.Apply(ctx, b); err != nil {
			close(done)
			wg.Wait()
			t.Fatalf("Apply batch %d: %v", i, err)
		}
	}
	close(done)
	wg.Wait()
	if readerErr != nil {
		t.Fatal(readerErr)
	}
}

// readOnce is one round of testConcurrentReader's reader.
func readOnce(s store.Store, keys int, payload func(int) string) error {
	st, err := s.State(ctx)
	if err != nil {
		return fmt.Errorf("State: %w", err)
	}
	if st.Empty {
		return nil
	}
	if st.Head%3 != 0 {
		return fmt.Errorf("State.Head %d is inside a batch (batches end at multiples of 3)", st.Head)
	}
	// The head's window is in the log.
	p, err := s.Log(ctx, store.LogQuery{After: st.Head - 1, UpTo: st.Head, MaxBytes: 1 << 20})
	if err != nil {
		return fmt.Errorf("Log(after %d, upTo %d) under State.Head: %w", st.Head-1, st.Head, err)
	}
	if p.Windows != 1 || p.Last != st.Head {
		return fmt.Errorf("Log(after %d, upTo %d) = %d windows, Last %d; want the head window", st.Head-1, st.Head, p.Windows, p.Last)
	}
	// The snapshot shows one whole batch, at least as new as the head.
	sp, err := s.Snapshot(ctx, store.SnapshotQuery{AsOf: everything, MaxRows: keys + 1, MaxBytes: 1 << 20})
	if err != nil {
		return fmt.Errorf("Snapshot: %w", err)
	}
	if sp.Rows != keys || sp.Next != nil {
		return fmt.Errorf("Snapshot = %d rows (Next %v), want all %d keys in one page", sp.Rows, sp.Next, keys)
	}
	first := ""
	for b := sp.Frames; len(b) > 0; {
		e, err := decodeFrame(b)
		if err != nil {
			return err
		}
		if first == "" {
			first = string(e.Payload)
		}
		if string(e.Payload) != first {
			return fmt.Errorf("Snapshot mixes batches: %q and %q", first, e.Payload)
		}
		b = b[e.n:]
	}
	if batch := int(st.Head/3) - 1; first < payload(batch) {
		return fmt.Errorf("Snapshot shows %q, older than the head's batch %d", first, batch)
	}
	n, err := s.CountRows(ctx, everything, nil)
	if err != nil {
		return fmt.Errorf("CountRows: %w", err)
	}
	if n != uint64(keys) {
		return fmt.Errorf("CountRows = %d, want %d", n, keys)
	}
	return nil
}
