package sqlite

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/source"
)

// TestCaptureMatchesTables writes random transactions from a separate
// connection while the source runs, then checks that the materialised
// events equal the tables, that SCNs increase and that every transaction
// landed whole in one window (and rolled-back ones nowhere).
func TestCaptureMatchesTables(t *testing.T) {
	path, db := newDB(t,
		`CREATE TABLE account(region TEXT NOT NULL, n INTEGER NOT NULL, balance REAL, note TEXT, tag INTEGER, PRIMARY KEY(region, n))`,
		`CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT, data BLOB, tag INTEGER)`)
	s, tables := open(t, Config{Path: path, Tables: []string{"account", "item"}})
	if tables[0].Name != "main.account" || tables[1].Name != "main.item" {
		t.Fatalf("Open returned %s, %s", tables[0].Name, tables[1].Name)
	}
	c := run(t, s, source.Position{})

	rng := rand.New(rand.NewPCG(1, 2))
	want := map[int64]int{} // tag → events its transaction must produce
	regions := []string{"eu", "us", "ap 🚀"}
	for tag := int64(1); tag <= 150; tag++ {
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		exec := func(per int, q string, args ...any) {
			res, err := tx.Exec(q, args...)
			if err != nil {
				t.Fatalf("%s: %v", q, err)
			}
			k, _ := res.RowsAffected()
			n += per * int(k)
		}
		for range 1 + rng.IntN(6) {
			region, num := regions[rng.IntN(len(regions))], rng.IntN(20)
			switch rng.IntN(7) {
			case 0:
				exec(1, `INSERT OR IGNORE INTO account VALUES(?, ?, ?, ?, ?)`, region, num, rng.Float64()*1000, fmt.Sprintf("note 'n%d'", rng.IntN(100)), tag)
			case 1:
				exec(1, `UPDATE account SET balance = balance + ?, note = ?, tag = ? WHERE region = ? AND n = ?`, rng.Float64(), "upd", tag, region, num)
			case 2:
				exec(1, `UPDATE account SET tag = ? WHERE region = ? AND n = ?`, tag, region, num)
				exec(1, `DELETE FROM account WHERE region = ? AND n = ?`, region, num)
			case 3:
				data := make([]byte, rng.IntN(8))
				for i := range data {
					data[i] = byte(rng.IntN(3)) // zero bytes included
				}
				exec(1, `INSERT INTO item(name, data, tag) VALUES(?, ?, ?)`, fmt.Sprint("item ", tag), data, tag)
			case 4:
				exec(1, `UPDATE item SET name = name || '+', tag = ? WHERE id % 5 = ?`, tag, rng.IntN(5))
			case 5: // key change: a delete and an insert
				var id int64
				if tx.QueryRow(`SELECT id FROM item WHERE id < 1000000 ORDER BY id DESC LIMIT 1`).Scan(&id) == nil {
					exec(1, `UPDATE item SET tag = ? WHERE id = ?`, tag, id)
					exec(2, `UPDATE item SET id = id + 1000000 WHERE id = ?`, id)
				}
			case 6:
				id := rng.IntN(int(tag)) + 1
				exec(1, `UPDATE item SET tag = ? WHERE id = ?`, tag, id)
				exec(1, `DELETE FROM item WHERE id = ?`, id)
			}
		}
		if tag%10 == 0 {
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
			want[tag] = 0
			continue
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		want[tag] = n
		if tag%15 == 0 {
			c.waitSCN(logEnd(t, db)) // a writer this fast would fit in a few windows
		}
	}
	ws := c.waitSCN(logEnd(t, db))
	c.stop()

	reg := registry(t, s)
	st := state{}
	apply(t, reg, st, ws, true)
	for _, tb := range tables {
		if d := cmp.Diff(tableRows(t, db, tb), st[tb.Name], cmp.Comparer(floatBits)); d != "" {
			t.Errorf("%s: materialised events differ from the table (-table +events):\n%s", tb.Name, d)
		}
	}

	got := map[int64]int{}
	windowOf := map[int64]uint64{}
	for _, w := range ws {
		for _, ev := range w.Events {
			if ev.Kind != event.KindData {
				continue
			}
			e, _ := reg.Get(ev.Source, ev.SchemaVersion)
			img := ev.Payload
			if ev.Op == event.OpDelete {
				img = ev.Before
			}
			row, err := e.Codec.Decode(img)
			if err != nil {
				t.Fatal(err)
			}
			tag := row["tag"].(int64)
			got[tag]++
			if prev, ok := windowOf[tag]; ok && prev != w.SCN {
				t.Errorf("transaction %d split across windows %d and %d", tag, prev, w.SCN)
			}
			windowOf[tag] = w.SCN
		}
	}
	for tag, n := range want {
		if got[tag] != n {
			t.Errorf("transaction %d: %d events, want %d", tag, got[tag], n)
		}
	}
	if len(ws) < 5 {
		t.Errorf("only %d windows: the test did not exercise polling", len(ws))
	}
}

func collectRun(t *testing.T, s *Source, from source.Position, upTo uint64) []*source.Window {
	t.Helper()
	c := run(t, s, from)
	ws := c.waitFor(fmt.Sprintf("SCN %d", upTo), func(ws []*source.Window) bool {
		return len(ws) > 0 && ws[len(ws)-1].SCN >= upTo
	})
	c.stop()
	return ws
}

func upTo(ws []*source.Window, scn uint64) []*source.Window {
	var out []*source.Window
	for _, w := range ws {
		if w.SCN <= scn {
			out = append(out, w)
		}
	}
	return out
}

func after(ws []*source.Window, scn uint64) []*source.Window {
	var out []*source.Window
	for _, w := range ws {
		if w.SCN > scn {
			out = append(out, w)
		}
	}
	return out
}

// TestRestartDeterminism runs the source, stops it, and runs new sources
// from earlier positions: the same windows must come out, byte for byte.
// Release must prune exactly up to its position.
func TestRestartDeterminism(t *testing.T) {
	path, db := newDB(t, `CREATE TABLE kv(k TEXT PRIMARY KEY, v INTEGER, w REAL)`)
	cfg := Config{Path: path, Tables: []string{"kv"}}
	s1, _ := open(t, cfg)
	c1 := run(t, s1, source.Position{})
	for i := range 60 {
		tx, _ := db.Begin()
		for j := range 1 + i%3 {
			mustExec(t, tx, `INSERT INTO kv VALUES(?, ?, ?) ON CONFLICT(k) DO UPDATE SET v = v + 1, w = excluded.w`, fmt.Sprint("k", (i*7+j)%13), i, float64(i)/3)
		}
		if i%5 == 0 {
			mustExec(t, tx, `DELETE FROM kv WHERE k = ?`, fmt.Sprint("k", i%13))
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if i%6 == 0 {
			c1.waitSCN(logEnd(t, db)) // force separate windows
		}
	}
	ws1 := c1.waitSCN(logEnd(t, db))
	c1.stop()
	s1.Close()
	if len(ws1) < 8 {
		t.Fatalf("only %d windows", len(ws1))
	}
	last := ws1[len(ws1)-1].SCN
	mid := ws1[len(ws1)/2].SCN

	s2, _ := open(t, cfg)
	if d := cmp.Diff(ws1, upTo(collectRun(t, s2, source.Position{}, last), last)); d != "" {
		t.Fatalf("run from the start differs (-first +second):\n%s", d)
	}
	if d := cmp.Diff(after(ws1, mid), upTo(collectRun(t, s2, source.Position{SCN: mid}, last), last)); d != "" {
		t.Fatalf("run from %d differs (-first +second):\n%s", mid, d)
	}

	// Release prunes only up to mid.
	var before int
	db.QueryRow(`SELECT count(*) FROM _databus_changelog WHERE seq > ?`, mid).Scan(&before)
	if err := s2.Release(context.Background(), source.Position{SCN: mid}); err != nil {
		t.Fatal(err)
	}
	var below, above int
	db.QueryRow(`SELECT count(*) FROM _databus_changelog WHERE seq <= ?`, mid).Scan(&below)
	db.QueryRow(`SELECT count(*) FROM _databus_changelog WHERE seq > ?`, mid).Scan(&above)
	if below != 0 || above != before {
		t.Fatalf("after Release(%d): %d entries at or below, %d above (want 0, %d)", mid, below, above, before)
	}
	if err := s2.Release(context.Background(), source.Position{SCN: ws1[1].SCN}); err != nil {
		t.Fatalf("releasing an older position: %v", err)
	}

	s3, _ := open(t, cfg)
	for _, from := range []source.Position{{SCN: mid}, {}} {
		if d := cmp.Diff(after(ws1, mid), upTo(collectRun(t, s3, from, last), last)); d != "" {
			t.Fatalf("run from %d after release differs (-first +second):\n%s", from.SCN, d)
		}
	}

	// Positions the log cannot serve.
	var rowSeq uint64
	db.QueryRow(`SELECT seq FROM _databus_changelog WHERE kind = 1 ORDER BY seq DESC LIMIT 1`).Scan(&rowSeq)
	for _, tc := range []struct {
		scn    uint64
		reason string
	}{
		{ws1[1].SCN, "was released"},
		{rowSeq, "not the SCN of a window"},
		{last + 1000, "beyond the end"},
	} {
		err := s3.Run(context.Background(), source.Position{SCN: tc.scn}, func(context.Context, *source.Window) error { return nil })
		var pe *PositionError
		if !errors.As(err, &pe) || !errors.Is(err, ErrPosition) || !strings.Contains(err.Error(), tc.reason) || pe.Released != mid {
			t.Errorf("Run from %d: %v, want a PositionError saying %q", tc.scn, err, tc.reason)
		}
	}
	if err := s3.Release(context.Background(), source.Position{SCN: rowSeq}); !errors.Is(err, ErrPosition) {
		t.Errorf("Release of a row entry: %v", err)
	}

	// Capture goes on after a release, from the released position.
	c3 := run(t, s3, source.Position{SCN: mid})
	mustExec(t, db, `INSERT INTO kv VALUES('new', 1, 1)`)
	ws3 := c3.waitSCN(logEnd(t, db))
	c3.stop()
	reg := registry(t, s3)
	st := state{}
	apply(t, reg, st, after(ws1, 0), true)
	apply(t, reg, st, after(ws3, last), false)
	tb := s3.Versions()[0]
	if d := cmp.Diff(tableRows(t, db, tb), st[tb.Name]); d != "" {
		t.Errorf("materialised after restart (-table +events):\n%s", d)
	}
}

// TestEmitErrorStopsRun checks that Run returns emit's error and that a run
// from the last window emitted resumes with the next one.
func TestEmitErrorStopsRun(t *testing.T) {
	path, db := newDB(t, `CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT)`)
	s, _ := open(t, Config{Path: path, Tables: []string{"kv"}})
	c := run(t, s, source.Position{})
	for i := range 5 {
		mustExec(t, db, `INSERT INTO kv VALUES(?, 'x')`, i)
		c.waitSCN(logEnd(t, db))
	}
	all := c.stop()
	boom := errors.New("boom")
	var got []*source.Window
	err := s.Run(context.Background(), source.Position{}, func(_ context.Context, w *source.Window) error {
		if len(got) == 3 {
			return boom
		}
		got = append(got, w)
		return nil
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Run returned %v, want emit's error", err)
	}
	rest := collectRun(t, s, got[2].Position, all[len(all)-1].SCN)
	if d := cmp.Diff(all, append(got, upTo(rest, all[len(all)-1].SCN)...)); d != "" {
		t.Errorf("resumed run differs (-first +resumed):\n%s", d)
	}
}

// TestTypes checks that every SQLite storage class survives capture
// exactly, in both the row and the before-image.
func TestTypes(t *testing.T) {
	path, db := newDB(t,
		`CREATE TABLE t(id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB, n NUMERIC, d DECIMAL(10,2), f BOOLEAN, "sp ace" TEXT NOT NULL DEFAULT '')`,
		`CREATE TABLE st(id INT PRIMARY KEY, i INT, r REAL, s TEXT, b BLOB) STRICT`,
		`CREATE TABLE "odd ""name"" 't'"("key col" TEXT PRIMARY KEY, "va""l" REAL)`)
	s, tables := open(t, Config{Path: path, Tables: []string{"t", "st", `odd "name" 't'`}})
	wantAvro := map[string]string{"id": `"long"`, "i": `"long"`, "r": `"double"`, "s": `"string"`, "b": `"bytes"`, "n": `"string"`, "d": `"string"`, "f": `"boolean"`, "sp ace": `"string"`}
	for _, col := range tables[0].Columns {
		if string(col.Avro) != wantAvro[col.Name] || col.Nullable != (col.Name != "id" && col.Name != "sp ace") {
			t.Errorf("column %s: %s nullable=%v", col.Name, col.Avro, col.Nullable)
		}
	}
	if col := tables[1].Columns[0]; col.Nullable {
		t.Errorf("the INT PRIMARY KEY of a STRICT table... is nullable in SQLite; got %+v", col)
	}
	c := run(t, s, source.Position{})

	bin := make([]byte, 256)
	for i := range bin {
		bin[i] = byte(i)
	}
	texts := []string{"🚀 'single' \"double\" \\back\\ ", "a\x00b\n\t\x01\x1f\x7f\u2028é", string([]byte{0xff, 0xfe, 'x', 0xc3}), ""}
	reals := []float64{0.1, math.Copysign(0, -1), 1e308, 5e-324, -1.5, math.Inf(1), math.Inf(-1), math.MaxFloat64, 1 << 53, 2.5e-300}
	ints := []int64{math.MaxInt64, math.MinInt64, 0, -1, 1 << 53, 1<<53 + 1}
	blobs := [][]byte{{0, 0, 1, 0}, {}, bin, nil}
	nums := []any{123, 1.5, "2024-01-02", "12345678901234567890.123", 0.1, -7, nil}
	for i := range 12 {
		var f any = int64(i % 2)
		if i%3 == 2 {
			f = nil
		}
		var s any = texts[i%len(texts)]
		if i == 11 {
			s = nil
		}
		mustExec(t, db, `INSERT INTO t VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)`, i, ints[i%len(ints)], reals[i%len(reals)], s, blobs[i%len(blobs)], nums[i%len(nums)], nums[(i+3)%len(nums)], f, texts[(i+1)%len(texts)])
		mustExec(t, db, `INSERT INTO st VALUES(?, ?, ?, ?, ?)`, i, ints[(i+1)%len(ints)], reals[(i+1)%len(reals)], texts[(i+2)%len(texts)], blobs[(i+1)%len(blobs)])
		mustExec(t, db, `INSERT INTO "odd ""name"" 't'" VALUES(?, ?)`, texts[i%len(texts)]+fmt.Sprint(i), reals[i%len(reals)])
	}
	// Before-images of every type.
	mustExec(t, db, `UPDATE t SET i = i / 2, s = s || '!', b = zeroblob(3) WHERE id % 2 = 0`)
	mustExec(t, db, `DELETE FROM t WHERE id % 3 = 0`)
	mustExec(t, db, `UPDATE st SET r = -r WHERE id > 5`)
	mustExec(t, db, `DELETE FROM st WHERE id = 1`)

	ws := c.waitSCN(logEnd(t, db))
	c.stop()
	st := state{}
	apply(t, registry(t, s), st, ws, true)
	for _, tb := range tables {
		if d := cmp.Diff(tableRows(t, db, tb), st[tb.Name], cmp.Comparer(floatBits)); d != "" {
			t.Errorf("%s: materialised events differ from the table (-table +events):\n%s", tb.Name, d)
		}
	}
	// Spot checks against literal values, in case the driver and the
	// source agreed on something wrong.
	row := st["main.t"][string(event.AppendKeyInt(nil, 1))]
	if row["i"] != int64(math.MinInt64) || row["r"] != nil && math.Float64bits(row["r"].(float64)) != 0 || row["s"] != texts[1] || string(row["b"].([]byte)) != "" || row["n"] != "1.5" || row["f"] != true {
		t.Errorf("row 1 = %#v", row)
	}
	row = st["main.t"][string(event.AppendKeyInt(nil, 2))]
	if row["s"] != texts[2]+"!" || row["r"] != 1e308 || row["n"] != "2024-01-02" || row["d"] != "-7" || row["f"] != nil {
		t.Errorf("row 2 = %#v", row)
	}
	row = st["main.t"][string(event.AppendKeyInt(nil, 4))]
	if row["i"] != int64(1<<52) || row["n"] != "0.1" || row["d"] != "123" || row["f"] != false || string(row["b"].([]byte)) != "\x00\x00\x00" {
		t.Errorf("row 4 = %#v", row)
	}
	row = st["main.t"][string(event.AppendKeyInt(nil, 5))]
	if b, ok := row["b"].([]byte); row["r"] != math.Inf(1) || !ok || len(b) != 0 || row["s"] != texts[1] { // an empty blob is not NULL
		t.Errorf("row 5 = %#v", row)
	}
	row = st["main.t"][string(event.AppendKeyInt(nil, 10))]
	if row["n"] != "1.2345678901234567e+19" || row["r"] != 0.1 || !bytes.Equal(row["b"].([]byte), []byte{0, 0, 0}) {
		t.Errorf("row 10 = %#v", row)
	}
}

// TestMistypedValue checks that a value that does not fit its column stops
// capture with an error naming table, column and sequence.
func TestMistypedValue(t *testing.T) {
	for _, tc := range []struct {
		decl  string
		value any
		ok    bool
	}{
		{"INTEGER", "abc", false},
		{"INTEGER", 1.5, false},
		{"INTEGER", []byte{1}, false},
		{"REAL", "x", false},
		{"REAL", 5, true},
		{"TEXT", []byte{0}, false},
		{"TEXT", 5, true},
		{"BLOB", 5, false},
		{"", "text", false},
		{"BOOLEAN", 2, false},
		{"BOOLEAN", 1, true},
		{"NUMERIC", "abc", true},
		{"NUMERIC", []byte("abc"), false},
	} {
		t.Run(fmt.Sprintf("%s_%T", tc.decl, tc.value), func(t *testing.T) {
			path, db := newDB(t, fmt.Sprintf(`CREATE TABLE loose(id INTEGER PRIMARY KEY, v %s)`, tc.decl))
			s, _ := open(t, Config{Path: path, Tables: []string{"loose"}})
			mustExec(t, db, `INSERT INTO loose VALUES(1, NULL)`)
			mustExec(t, db, `INSERT INTO loose VALUES(2, ?)`, tc.value)
			var seq uint64
			db.QueryRow(`SELECT max(seq) FROM _databus_changelog`).Scan(&seq)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			n := 0
			err := s.Run(ctx, source.Position{}, func(_ context.Context, w *source.Window) error {
				for _, ev := range w.Events {
					if ev.Kind == event.KindData {
						n++
					}
				}
				if n == 2 {
					cancel()
				}
				return nil
			})
			if tc.ok {
				if !errors.Is(err, context.Canceled) || n != 2 {
					t.Fatalf("Run = %v after %d events, want both rows captured", err, n)
				}
				return
			}
			var ve *ValueError
			if !errors.As(err, &ve) || ve.Table != "main.loose" || ve.Column != "v" || ve.Seq != seq {
				t.Fatalf("Run = %v, want a ValueError for main.loose column v at seq %d", err, seq)
			}
			for _, s := range []string{"main.loose", `"v"`, fmt.Sprint("seq ", seq), "STRICT"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %s", err, s)
				}
			}
		})
	}
}

// TestSchemaChange adds a column while the source runs and while it is
// stopped: a schema-change event precedes the first row of each new
// version, rows decode with the version they were written with, also
// after a restart.
func TestSchemaChange(t *testing.T) {
	path, db := newDB(t, `CREATE TABLE person(id INTEGER PRIMARY KEY, name TEXT)`)
	cfg := Config{Path: path, Tables: []string{"person"}}
	s, tables := open(t, cfg)
	if tables[0].Version != 1 {
		t.Fatalf("first version is %d", tables[0].Version)
	}
	c := run(t, s, source.Position{})
	mustExec(t, db, `INSERT INTO person VALUES(1, 'ann'), (2, 'bob')`)
	c.waitSCN(logEnd(t, db))
	mustExec(t, db, `ALTER TABLE person ADD COLUMN age INTEGER`)
	c.waitFor("version 2", func([]*source.Window) bool { return len(s.Versions()) == 2 })
	mustExec(t, db, `INSERT INTO person VALUES(3, 'cy', 30)`)
	mustExec(t, db, `UPDATE person SET age = 40 WHERE id = 1`)
	ws := c.waitSCN(logEnd(t, db))
	c.stop()

	check := func(ws []*source.Window) {
		t.Helper()
		var order []string
		for _, w := range ws {
			for _, ev := range w.Events {
				if ev.Kind == event.KindSchemaChange {
					order = append(order, fmt.Sprintf("schema v%d", ev.SchemaVersion))
				} else {
					k, _ := event.DecodeKey(ev.Key)
					order = append(order, fmt.Sprintf("%v %v v%d", ev.Op, k[0], ev.SchemaVersion))
				}
			}
		}
		want := []string{"schema v1", "insert 1 v1", "insert 2 v1", "schema v2", "insert 3 v2", "update 1 v2"}
		if d := cmp.Diff(want, order); d != "" {
			t.Fatalf("events (-want +got):\n%s", d)
		}
		st := state{}
		apply(t, registry(t, s), st, ws, true)
		fillMissing(st["main.person"], s.Versions()[1])
		if d := cmp.Diff(tableRows(t, db, s.Versions()[1]), st["main.person"]); d != "" {
			t.Errorf("materialised (-table +events):\n%s", d)
		}
	}
	check(ws)

	// A restart with no DDL keeps the version; old entries still decode.
	s.Close()
	s, tables = open(t, cfg)
	if tables[0].Version != 2 || len(s.Versions()) != 2 {
		t.Fatalf("after restart: version %d, %d versions", tables[0].Version, len(s.Versions()))
	}
	check(upTo(collectRun(t, s, source.Position{}, ws[len(ws)-1].SCN), ws[len(ws)-1].SCN))

	// DDL while stopped is found by Open.
	s.Close()
	mustExec(t, db, `ALTER TABLE person ADD COLUMN email TEXT NOT NULL DEFAULT 'none'`)
	mustExec(t, db, `INSERT INTO person VALUES(4, 'dee', 1, 'd@x')`) // old triggers: recorded as v2
	s, tables = open(t, cfg)
	if tables[0].Version != 3 {
		t.Fatalf("after ALTER while stopped: version %d", tables[0].Version)
	}
	mustExec(t, db, `INSERT INTO person VALUES(5, 'eve', 2, 'e@x')`)
	ws = after(collectRun(t, s, source.Position{SCN: ws[len(ws)-1].SCN}, logEnd(t, db)), 0)
	var got []string
	for _, w := range ws {
		for _, ev := range w.Events {
			got = append(got, fmt.Sprintf("%v v%d", ev.Kind, ev.SchemaVersion))
		}
	}
	if d := cmp.Diff([]string{"data v2", "schema_change v3", "data v3"}, got); d != "" {
		t.Errorf("events after DDL while stopped (-want +got):\n%s", d)
	}
}

// TestKeyChange checks that an update of the primary key is a delete of
// the old key followed by an insert of the new one.
func TestKeyChange(t *testing.T) {
	path, db := newDB(t,
		`CREATE TABLE item(id INTEGER PRIMARY KEY, v TEXT)`,
		`CREATE TABLE pair(a TEXT, b INTEGER, v TEXT, PRIMARY KEY(a, b)) WITHOUT ROWID`)
	s, tables := open(t, Config{Path: path, Tables: []string{"item", "pair"}})
	c := run(t, s, source.Position{})
	mustExec(t, db, `INSERT INTO item VALUES(1, 'x')`)
	mustExec(t, db, `INSERT INTO pair VALUES('p', 1, 'x')`)
	mustExec(t, db, `UPDATE item SET v = 'y'`)
	mustExec(t, db, `UPDATE item SET id = 2`)
	mustExec(t, db, `UPDATE pair SET b = 2, v = 'z'`)
	ws := c.waitSCN(logEnd(t, db))
	c.stop()
	var got []string
	for _, w := range ws {
		for _, ev := range w.Events {
			if ev.Kind != event.KindData {
				continue
			}
			k, _ := event.DecodeKey(ev.Key)
			got = append(got, fmt.Sprintf("%v %v payload=%v before=%v", ev.Op, k, len(ev.Payload) > 0, ev.HasBefore))
		}
	}
	want := []string{
		"insert [1] payload=true before=false",
		"insert [p 1] payload=true before=false",
		"update [1] payload=true before=true",
		"delete [1] payload=false before=true",
		"insert [2] payload=true before=false",
		"delete [p 1] payload=false before=true",
		"insert [p 2] payload=true before=false",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("events (-want +got):\n%s", d)
	}
	st := state{}
	apply(t, registry(t, s), st, ws, true)
	for _, tb := range tables {
		if d := cmp.Diff(tableRows(t, db, tb), st[tb.Name]); d != "" {
			t.Errorf("%s (-table +events):\n%s", tb.Name, d)
		}
	}
}

// TestHeartbeat checks that an idle source emits empty windows.
func TestHeartbeat(t *testing.T) {
	path, _ := newDB(t, `CREATE TABLE kv(k INTEGER PRIMARY KEY)`)
	s, _ := open(t, Config{Path: path, Tables: []string{"kv"}, HeartbeatInterval: 20 * time.Millisecond})
	c := run(t, s, source.Position{})
	ws := c.waitFor("4 windows", func(ws []*source.Window) bool { return len(ws) >= 4 })
	c.stop()
	for _, w := range ws[1:] { // the first one holds the schema change
		if len(w.Events) != 0 {
			t.Errorf("heartbeat window %d has %d events", w.SCN, len(w.Events))
		}
	}
	for i := 2; i < len(ws); i++ {
		if ws[i].SCN <= ws[i-1].SCN || ws[i].Timestamp-ws[i-1].Timestamp < int64(15*time.Millisecond) {
			t.Errorf("heartbeat %d at %d after %d at %d", ws[i].SCN, ws[i].Timestamp, ws[i-1].SCN, ws[i-1].Timestamp)
		}
	}

	// Disabled heartbeats: no window while idle.
	s2, _ := open(t, Config{Path: path, Tables: []string{"kv"}, HeartbeatInterval: -1})
	c2 := run(t, s2, source.Position{SCN: ws[len(ws)-1].SCN})
	time.Sleep(100 * time.Millisecond)
	if ws := c2.stop(); len(ws) != 0 {
		t.Errorf("%d windows while idle with heartbeats disabled", len(ws))
	}
}

// TestNoPrimaryKey checks the rowid rule for tables without a primary key.
func TestNoPrimaryKey(t *testing.T) {
	path, db := newDB(t,
		`CREATE TABLE notes(body TEXT, n INTEGER)`,
		`CREATE TABLE shadow(rowid TEXT, x INTEGER)`)
	s, tables := open(t, Config{Path: path, Tables: []string{"notes", "shadow"}})
	for _, tb := range tables {
		if tb.Key[0] != "_rowid" || tb.Columns[0].Name != "_rowid" || tb.Columns[0].Nullable || string(tb.Columns[0].Avro) != `"long"` {
			t.Fatalf("%s: key %v, first column %+v", tb.Name, tb.Key, tb.Columns[0])
		}
	}
	c := run(t, s, source.Position{})
	mustExec(t, db, `INSERT INTO notes VALUES('a', 1), ('b', 2), ('a', 1)`)
	mustExec(t, db, `UPDATE notes SET n = 5 WHERE rowid = 2`)
	mustExec(t, db, `DELETE FROM notes WHERE rowid = 1`)
	mustExec(t, db, `INSERT INTO shadow VALUES('r', 1), ('s', 2)`)
	mustExec(t, db, `DELETE FROM shadow WHERE x = 1`)
	ws := c.waitSCN(logEnd(t, db))
	c.stop()
	st := state{}
	apply(t, registry(t, s), st, ws, true)
	for _, tb := range tables {
		want := tableRows(t, db, tb)
		if len(want) == 0 {
			t.Fatalf("%s has %d rows", tb.Name, len(want))
		}
		if d := cmp.Diff(want, st[tb.Name]); d != "" {
			t.Errorf("%s (-table +events):\n%s", tb.Name, d)
		}
	}
}

func TestConfigAndOpenErrors(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Tables: []string{"a"}}, "Path"},
		{Config{Path: "x"}, "Tables is empty"},
		{Config{Path: "x", Tables: []string{""}}, "Tables[0] is empty"},
		{Config{Path: "x", Tables: []string{"a", "_DATABUS_x"}}, "Tables[1]"},
		{Config{Path: "x", Tables: []string{"a", "A"}}, "twice"},
		{Config{Path: "x", Tables: []string{"a"}, PollInterval: -1}, "PollInterval"},
	} {
		err := tc.cfg.Validate()
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want an error naming %s", tc.cfg, err, tc.want)
		}
		if _, err := New(tc.cfg, nil); err == nil {
			t.Errorf("New(%+v) accepted an invalid config", tc.cfg)
		}
	}

	path, _ := newDB(t, `CREATE TABLE a(id INTEGER PRIMARY KEY)`, `CREATE VIEW v AS SELECT * FROM a`, `CREATE TABLE "a b"(a_b INTEGER PRIMARY KEY, "a b" TEXT)`)
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Path: path, Tables: []string{"a", "missing"}}, `"missing": no such table`},
		{Config{Path: path, Tables: []string{"v"}}, "view"},
		{Config{Path: path, Tables: []string{"a b"}}, "two columns named"},
		{Config{Path: path + ".nope", Tables: []string{"a"}}, "no such file"},
	} {
		s, err := New(tc.cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Open(context.Background())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%v) = %v, want an error saying %s", tc.cfg.Tables, err, tc.want)
		}
		if err := s.Run(context.Background(), source.Position{}, nil); !errors.Is(err, ErrNotOpen) {
			t.Errorf("Run before a successful Open = %v", err)
		}
		s.Close()
	}
}

// TestTableDropped checks that dropping a captured table stops Run with a
// clear error, after the changes made before the drop were emitted.
func TestTableDropped(t *testing.T) {
	path, db := newDB(t, `CREATE TABLE gone(id INTEGER PRIMARY KEY)`)
	s, _ := open(t, Config{Path: path, Tables: []string{"gone"}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	mustExec(t, db, `INSERT INTO gone VALUES(1)`)
	done := make(chan error)
	go func() {
		done <- s.Run(ctx, source.Position{}, func(context.Context, *source.Window) error { return nil })
	}()
	time.Sleep(20 * time.Millisecond)
	mustExec(t, db, `DROP TABLE gone`)
	if err := <-done; !errors.Is(err, ErrUnknownTable) {
		t.Errorf("Run = %v, want ErrUnknownTable", err)
	}
}

// TestConcurrentRelease releases windows while Run keeps capturing.
func TestConcurrentRelease(t *testing.T) {
	path, db := newDB(t, `CREATE TABLE kv(k INTEGER PRIMARY KEY, v INTEGER)`)
	s, tables := open(t, Config{Path: path, Tables: []string{"kv"}})
	c := run(t, s, source.Position{})
	ctx := context.Background()
	var released uint64
	for i := range 200 {
		mustExec(t, db, `INSERT INTO kv VALUES(?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v`, i%17, i)
		if i%10 == 9 {
			c.waitSCN(logEnd(t, db))
		}
		if ws := c.snapshot(); i%10 == 0 && len(ws) > 1 {
			released = ws[len(ws)-2].SCN
			if err := s.Release(ctx, ws[len(ws)-2].Position); err != nil {
				t.Fatal(err)
			}
		}
	}
	ws := c.waitSCN(logEnd(t, db))
	c.stop()
	if released == 0 {
		t.Fatal("nothing released")
	}
	st := state{}
	apply(t, registry(t, s), st, ws, true)
	if d := cmp.Diff(tableRows(t, db, tables[0]), st["main.kv"]); d != "" {
		t.Errorf("(-table +events):\n%s", d)
	}
	var n int
	db.QueryRow(`SELECT count(*) FROM _databus_changelog WHERE seq <= ?`, released).Scan(&n)
	if n != 0 {
		t.Errorf("%d entries at or below the released position", n)
	}
}

// TestGeneratedColumns checks that virtual and stored generated columns are
// captured like the others (SELECT * shows them too).
func TestGeneratedColumns(t *testing.T) {
	path, db := newDB(t, `CREATE TABLE g(id INTEGER PRIMARY KEY, a INTEGER, v INTEGER AS (a * 2) VIRTUAL, s TEXT AS ('#' || a) STORED)`)
	s, tables := open(t, Config{Path: path, Tables: []string{"g"}})
	if n := len(tables[0].Columns); n != 4 {
		t.Fatalf("%d columns", n)
	}
	c := run(t, s, source.Position{})
	mustExec(t, db, `INSERT INTO g(id, a) VALUES(1, 5), (2, 6)`)
	mustExec(t, db, `UPDATE g SET a = 7 WHERE id = 1`)
	mustExec(t, db, `DELETE FROM g WHERE id = 2`)
	ws := c.waitSCN(logEnd(t, db))
	c.stop()
	st := state{}
	apply(t, registry(t, s), st, ws, true)
	if d := cmp.Diff(tableRows(t, db, tables[0]), st["main.g"]); d != "" {
		t.Errorf("(-table +events):\n%s", d)
	}
}
