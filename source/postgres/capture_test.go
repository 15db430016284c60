package postgres

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/internal/dbtest"
	"github.com/databus-go/databus/source"
)

// TestMixedTransactions writes multi-statement transactions over three
// tables (one with a composite key, with key updates) and checks that the
// materialised stream equals the tables, that SCNs strictly increase and
// that every transaction is exactly one window.
func TestMixedTransactions(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.accounts", "public.lines", "app.notes")
	e.exec(t,
		"CREATE SCHEMA app",
		"CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2), txn int NOT NULL)",
		"CREATE TABLE lines (order_id int, line int, sku text, qty int, txn int NOT NULL, PRIMARY KEY (order_id, line))",
		"CREATE TABLE app.notes (id bigint PRIMARY KEY, note text, txn int NOT NULL)",
	)
	s, tables := open(t, e.cfg)
	if len(tables) != 3 {
		t.Fatalf("Open returned %d tables", len(tables))
	}
	from := source.Position{}

	rng := rand.New(rand.NewPCG(1, 2))
	accounts := map[int]bool{}
	lines := map[[2]int]bool{}
	notes := map[int]bool{}
	const txns = 60
	for k := 1; k <= txns; k++ {
		var stmts []string
		for range 1 + rng.IntN(5) {
			switch rng.IntN(9) {
			case 0, 1:
				id := 2 + rng.IntN(40)
				if !accounts[id] {
					accounts[id] = true
					stmts = append(stmts, fmt.Sprintf("INSERT INTO accounts VALUES (%d, 'o%d', %d.%02d, %d)", id, id, rng.IntN(1000), rng.IntN(100), k))
				}
			case 2:
				for id := range accounts {
					stmts = append(stmts, fmt.Sprintf("UPDATE accounts SET balance = balance + 1.25, txn = %d WHERE id = %d", k, id))
					break
				}
			case 3:
				for id := range accounts {
					delete(accounts, id)
					stmts = append(stmts, fmt.Sprintf("DELETE FROM accounts WHERE id = %d", id))
					break
				}
			case 4, 5:
				key := [2]int{rng.IntN(10), rng.IntN(5)}
				if !lines[key] {
					lines[key] = true
					stmts = append(stmts, fmt.Sprintf("INSERT INTO lines VALUES (%d, %d, 'sku-%d', %d, %d)", key[0], key[1], rng.IntN(100), rng.IntN(9), k))
				}
			case 6:
				// A key update: a delete and an insert in the stream.
				for key := range lines {
					nk := [2]int{key[0], key[1] + 100}
					if lines[nk] {
						break
					}
					delete(lines, key)
					lines[nk] = true
					stmts = append(stmts, fmt.Sprintf("UPDATE lines SET line = %d, txn = %d WHERE order_id = %d AND line = %d", nk[1], k, key[0], key[1]))
					break
				}
			case 7:
				id := rng.IntN(30)
				if notes[id] {
					stmts = append(stmts, fmt.Sprintf("UPDATE app.notes SET note = note || '+', txn = %d WHERE id = %d", k, id))
				} else {
					notes[id] = true
					stmts = append(stmts, fmt.Sprintf("INSERT INTO app.notes VALUES (%d, 'n%d', %d)", id, id, k))
				}
			case 8:
				for id := range notes {
					delete(notes, id)
					stmts = append(stmts, fmt.Sprintf("DELETE FROM app.notes WHERE id = %d", id))
					break
				}
			}
		}
		if len(stmts) == 0 {
			stmts = []string{fmt.Sprintf("INSERT INTO app.notes VALUES (%d, 'filler', %d)", 1000+k, k)}
			notes[1000+k] = true
		}
		e.tx(t, stmts...)
	}

	ws := captureUntilMark(t, e, s, from)
	checkWindows(t, ws)
	reg := newRegistry(t, nil)
	got := materialise(t, reg, ws)
	want := e.tables(t)
	for name := range want {
		if got[name] == nil {
			got[name] = map[string]map[string]any{}
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("materialised stream differs from the tables (-tables +stream):\n%s", diff)
	}

	// One window per transaction: every insert and update of a window
	// carries the same txn tag, and no tag is in two windows.
	seen := map[int]uint64{}
	for _, w := range dataWindows(ws) {
		tag := -1
		for i := range w.Events {
			ev := &w.Events[i]
			if ev.Kind != event.KindData || ev.Op == event.OpDelete {
				continue
			}
			row, _ := reg.decode(ev)
			k := row["txn"].(int)
			if tag >= 0 && k != tag {
				t.Fatalf("window %d holds rows of transactions %d and %d", w.SCN, tag, k)
			}
			tag = k
		}
		if tag < 0 {
			continue
		}
		if prev, ok := seen[tag]; ok {
			t.Fatalf("transaction %d is in windows %d and %d", tag, prev, w.SCN)
		}
		seen[tag] = w.SCN
		if w.TxID == "" || w.Timestamp == 0 {
			t.Fatalf("window %d: TxID %q, timestamp %d", w.SCN, w.TxID, w.Timestamp)
		}
	}
	if n := len(dataWindows(ws)); n != txns {
		t.Fatalf("%d data windows for %d transactions", n, txns)
	}
}

// tables reads the three tables of TestMixedTransactions in the form the
// stream decodes to.
func (e *env) tables(t testing.TB) map[string]map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]map[string]any{}
	read := func(name, q string, scan func(vals []any) (string, map[string]any)) {
		rows, err := e.db.Query(q)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		out[name] = map[string]map[string]any{}
		cols, _ := rows.Columns()
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			k, row := scan(vals)
			out[name][k] = row
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
	}
	i32 := func(v any) any {
		if v == nil {
			return nil
		}
		return int(v.(int64))
	}
	str := func(v any) any {
		if v == nil {
			return nil
		}
		return fmt.Sprint(v)
	}
	read("public.accounts", "SELECT id, owner, balance, txn FROM accounts", func(v []any) (string, map[string]any) {
		return fmt.Sprint(v[0]), map[string]any{"id": i32(v[0]), "owner": str(v[1]), "balance": str(v[2]), "txn": i32(v[3])}
	})
	read("public.lines", "SELECT order_id, line, sku, qty, txn FROM lines", func(v []any) (string, map[string]any) {
		return fmt.Sprintf("%v|%v", v[0], v[1]), map[string]any{"order_id": i32(v[0]), "line": i32(v[1]), "sku": str(v[2]), "qty": i32(v[3]), "txn": i32(v[4])}
	})
	read("app.notes", "SELECT id, note, txn FROM app.notes", func(v []any) (string, map[string]any) {
		return fmt.Sprint(v[0]), map[string]any{"id": v[0], "note": str(v[1]), "txn": i32(v[2])}
	})
	return out
}

// TestDDLMidStream alters a table between transactions and inside one and
// checks that every change of definition is announced before the first
// row that uses it, and that every row decodes with its own version.
func TestDDLMidStream(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.t")
	e.exec(t, "CREATE TABLE t (id int PRIMARY KEY, a int, b text)")
	s, tables := open(t, e.cfg)
	if tables[0].Version != 1 {
		t.Fatalf("Open: version %d", tables[0].Version)
	}
	e.exec(t,
		"INSERT INTO t VALUES (1, 10, 'x')",
		"ALTER TABLE t ADD COLUMN c bigint DEFAULT 7",
		"INSERT INTO t VALUES (2, 20, 'y', 8)",
		"ALTER TABLE t DROP COLUMN a",
		"INSERT INTO t VALUES (3, 'z', 9)",
		"ALTER TABLE t ALTER COLUMN c TYPE numeric(10,1)",
		"INSERT INTO t VALUES (4, 'w', 1.5)",
		"UPDATE t SET b = 'x2' WHERE id = 1",
	)
	// Two definitions inside one transaction, and back.
	e.tx(t, "INSERT INTO t VALUES (5, 'v', 2)", "ALTER TABLE t ADD COLUMN d int", "INSERT INTO t VALUES (6, 'u', 3, 4)",
		"ALTER TABLE t DROP COLUMN d", "INSERT INTO t VALUES (7, 't', 5)")
	ws := captureUntilMark(t, e, s, source.Position{})
	checkWindows(t, ws)
	reg := newRegistry(t, nil)
	type rowv struct {
		id      int
		version uint16
		fields  []string
	}
	var got []rowv
	for _, w := range ws {
		for i := range w.Events {
			ev := &w.Events[i]
			reg.observe(w, ev)
			if ev.Kind != event.KindData {
				continue
			}
			row, _ := reg.decode(ev)
			var fields []string
			for f := range row {
				fields = append(fields, f)
			}
			slices.Sort(fields)
			got = append(got, rowv{row["id"].(int), ev.SchemaVersion, fields})
		}
	}
	u := UnchangedColumn
	want := []rowv{
		{1, 1, []string{u, "a", "b", "id"}},
		{2, 2, []string{u, "a", "b", "c", "id"}},
		{3, 3, []string{u, "b", "c", "id"}},
		{4, 4, []string{u, "b", "c", "id"}},
		{1, 4, []string{u, "b", "c", "id"}},
		{5, 4, []string{u, "b", "c", "id"}},
		{6, 5, []string{u, "b", "c", "d", "id"}},
		{7, 4, []string{u, "b", "c", "id"}},
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(rowv{})); diff != "" {
		t.Fatalf("rows (-want +got):\n%s", diff)
	}
	var announced []uint16
	for _, c := range reg.changes {
		announced = append(announced, c.Version)
	}
	if diff := cmp.Diff([]uint16{1, 2, 3, 4, 5, 4}, announced); diff != "" {
		t.Fatalf("announced versions (-want +got):\n%s", diff)
	}
	// The numeric column became a string; its source type says numeric.
	if sc := reg.tables[[2]uint32{tables[0].ID, 4}]; !strings.Contains(string(sc.Avro), `"doc":"numeric(10,1)"`) {
		t.Fatalf("version 4: %s", sc.Avro)
	}
	// A new Source on the same state directory maps Open's catalog to the
	// last version seen in the log.
	s2, tables2 := open(t, e.cfg)
	_ = s2
	if tables2[0].Version != 4 {
		t.Fatalf("reopened: version %d, want 4", tables2[0].Version)
	}
}

// TestTOAST checks that an unchanged TOASTed column is never silently null:
// with the default replica identity it is null and listed in
// UnchangedColumn; with REPLICA IDENTITY FULL it is filled from the old row.
func TestTOAST(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.docs", "public.docs_full")
	big := "repeat(md5(random()::text), 300)" // 9600 bytes
	e.exec(t,
		"CREATE TABLE docs (id int PRIMARY KEY, title text, body text, data bytea)",
		"ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL, ALTER COLUMN data SET STORAGE EXTERNAL",
		"CREATE TABLE docs_full (id int PRIMARY KEY, title text, body text)",
		"ALTER TABLE docs_full ALTER COLUMN body SET STORAGE EXTERNAL",
		"ALTER TABLE docs_full REPLICA IDENTITY FULL",
	)
	s, _ := open(t, e.cfg)
	e.exec(t,
		"INSERT INTO docs VALUES (1, 'one', "+big+", convert_to("+big+", 'UTF8'))",
		"INSERT INTO docs_full VALUES (1, 'one', "+big+")",
		"UPDATE docs SET title = 'uno' WHERE id = 1",
		"UPDATE docs_full SET title = 'uno' WHERE id = 1",
		"UPDATE docs SET title = 'ein', body = 'short' WHERE id = 1",
	)
	var fullBody string
	if err := e.db.QueryRow("SELECT body FROM docs_full WHERE id = 1").Scan(&fullBody); err != nil {
		t.Fatal(err)
	}
	ws := dataWindows(captureUntilMark(t, e, s, source.Position{}))
	reg := newRegistry(t, nil)
	var rows []map[string]any
	var befores []map[string]any
	for _, w := range ws {
		for i := range w.Events {
			ev := &w.Events[i]
			reg.observe(w, ev)
			if ev.Kind == event.KindData {
				r, b := reg.decode(ev)
				rows, befores = append(rows, r), append(befores, b)
			}
		}
	}
	if len(rows) != 5 {
		t.Fatalf("%d data events, want 5", len(rows))
	}
	// docs insert: everything present.
	if rows[0]["body"] == nil || len(rows[0][UnchangedColumn].([]any)) != 0 {
		t.Fatalf("insert: %v", rows[0])
	}
	// docs update of title only: body and data unchanged, null and listed.
	if rows[2]["body"] != nil || rows[2]["data"] != nil || rows[2]["title"] != "uno" {
		t.Fatalf("update: %v", rows[2])
	}
	if diff := cmp.Diff([]any{"body", "data"}, rows[2][UnchangedColumn]); diff != "" {
		t.Fatalf("unchanged columns (-want +got):\n%s", diff)
	}
	if befores[2] != nil {
		t.Fatalf("default identity update has a before-image: %v", befores[2])
	}
	// docs_full update: body filled from the old row, before-image whole.
	if rows[3]["body"] != fullBody || len(rows[3][UnchangedColumn].([]any)) != 0 {
		t.Fatalf("full identity update: body %d bytes, unchanged %v", len(fmt.Sprint(rows[3]["body"])), rows[3][UnchangedColumn])
	}
	if befores[3]["body"] != fullBody || befores[3]["title"] != "one" {
		t.Fatalf("full identity before-image: %v", befores[3]["title"])
	}
	// docs update of body: data still unchanged.
	if rows[4]["body"] != "short" || !reflect.DeepEqual(rows[4][UnchangedColumn], []any{"data"}) {
		t.Fatalf("second update: %v", rows[4])
	}
}

// TestReplicaIdentity checks the before-images of updates and deletes with
// the default replica identity (key only, on deletes and key changes) and
// with FULL (the whole old row).
func TestReplicaIdentity(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.d", "public.f", "public.nokey")
	e.exec(t,
		"CREATE TABLE d (id int PRIMARY KEY, v text, w int)",
		"CREATE TABLE f (id int PRIMARY KEY, v text, w int)",
		"ALTER TABLE f REPLICA IDENTITY FULL",
		"CREATE TABLE nokey (v text, w int)",
	)
	s, tables := open(t, e.cfg)
	if diff := cmp.Diff([][]string{{"id"}, {"id"}, {"v", "w"}}, [][]string{tables[0].Key, tables[1].Key, tables[2].Key}); diff != "" {
		t.Fatalf("keys (-want +got):\n%s", diff)
	}
	for _, tb := range []string{"d", "f"} {
		e.exec(t,
			"INSERT INTO "+tb+" VALUES (1, 'a', 1), (2, 'b', 2)",
			"UPDATE "+tb+" SET v = 'a2' WHERE id = 1",
			"DELETE FROM "+tb+" WHERE id = 2",
			"UPDATE "+tb+" SET id = 3, w = 30 WHERE id = 1",
		)
	}
	e.exec(t, "INSERT INTO nokey VALUES ('x', 1)")
	ws := dataWindows(captureUntilMark(t, e, s, source.Position{}))
	reg := newRegistry(t, nil)
	type ev struct {
		Table  string
		Op     string
		Key    string
		Row    map[string]any
		Before map[string]any
	}
	var got []ev
	for _, w := range ws {
		for i := range w.Events {
			e := &w.Events[i]
			reg.observe(w, e)
			if e.Kind != event.KindData {
				continue
			}
			r, b := reg.decode(e)
			if r != nil {
				delete(r, UnchangedColumn)
			}
			if b != nil {
				delete(b, UnchangedColumn)
			}
			got = append(got, ev{reg.names[e.Source], e.Op.String(), keyString(t, e.Key), r, b})
		}
	}
	row := func(id int, v any, w any) map[string]any { return map[string]any{"id": id, "v": v, "w": w} }
	want := []ev{
		{"public.d", "insert", "1", row(1, "a", 1), nil},
		{"public.d", "insert", "2", row(2, "b", 2), nil},
		{"public.d", "update", "1", row(1, "a2", 1), nil},
		{"public.d", "delete", "2", nil, row(2, nil, nil)},
		{"public.d", "delete", "1", nil, row(1, nil, nil)},
		{"public.d", "insert", "3", row(3, "a2", 30), nil},
		{"public.f", "insert", "1", row(1, "a", 1), nil},
		{"public.f", "insert", "2", row(2, "b", 2), nil},
		{"public.f", "update", "1", row(1, "a2", 1), row(1, "a", 1)},
		{"public.f", "delete", "2", nil, row(2, "b", 2)},
		{"public.f", "delete", "1", nil, row(1, "a2", 1)},
		{"public.f", "insert", "3", row(3, "a2", 30), nil},
		{"public.nokey", "insert", "x|1", map[string]any{"v": "x", "w": 1}, nil},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("events (-want +got):\n%s", diff)
	}
}

// TestTruncate checks that TRUNCATE becomes a schema-change frame that
// tells consumers to drop the table's rows.
func TestTruncate(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.a", "public.b")
	e.exec(t, "CREATE TABLE a (id int PRIMARY KEY)", "CREATE TABLE b (id int PRIMARY KEY)")
	s, _ := open(t, e.cfg)
	e.exec(t, "INSERT INTO a VALUES (1), (2)", "INSERT INTO b VALUES (1)", "TRUNCATE a, b RESTART IDENTITY", "INSERT INTO a VALUES (3)")
	ws := dataWindows(captureUntilMark(t, e, s, source.Position{}))
	reg := newRegistry(t, nil)
	got := materialise(t, reg, ws)
	if diff := cmp.Diff(map[string]map[string]map[string]any{
		"public.a": {"3": {"id": 3}},
		"public.b": {},
	}, got); diff != "" {
		t.Fatalf("after TRUNCATE (-want +got):\n%s", diff)
	}
	var truncs []string
	for _, c := range reg.changes {
		if c.Truncate {
			if c.DDL != "truncate" || !c.RestartIdentity || c.Cascade {
				t.Fatalf("truncate frame: %+v", c)
			}
			truncs = append(truncs, c.Name)
		}
	}
	if diff := cmp.Diff([]string{"public.a", "public.b"}, truncs); diff != "" {
		t.Fatalf("truncated (-want +got):\n%s", diff)
	}
}

// TestHeartbeats checks that an idle stream yields empty windows with
// increasing SCNs and that the slot is confirmed only up to the released
// position.
func TestHeartbeats(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.t")
	e.exec(t, "CREATE TABLE t (id int PRIMARY KEY)")
	s, _ := open(t, e.cfg)
	start := e.slotConfirmed(t)
	r := startRun(t, s, source.Position{})
	e.exec(t, "INSERT INTO t VALUES (1)")
	deadline := time.Now().Add(20 * time.Second)
	var ws []*source.Window
	for {
		ws = r.snapshot()
		if len(ws) >= 4 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	checkWindows(t, ws)
	empty := 0
	for _, w := range ws {
		if len(w.Events) == 0 {
			empty++
			if w.Timestamp == 0 {
				t.Fatalf("heartbeat window %d has no timestamp", w.SCN)
			}
		}
	}
	if empty < 3 {
		t.Fatalf("%d heartbeat windows among %d", empty, len(ws))
	}
	// Nothing released: the slot stays where it was.
	time.Sleep(3 * e.cfg.StatusInterval)
	if got := e.slotConfirmed(t); got != start {
		t.Fatalf("slot confirmed %s without a release (was %s)", lsnString(got), lsnString(start))
	}
	rel := ws[1].SCN
	if err := s.Release(context.Background(), source.Position{SCN: rel}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); e.slotConfirmed(t) != rel; {
		if time.Now().After(deadline) {
			t.Fatalf("slot confirmed %s, want the released %s", lsnString(e.slotConfirmed(t)), lsnString(rel))
		}
		time.Sleep(20 * time.Millisecond)
	}
	st := s.Stats()
	if st.ReleasedLSN != rel || st.LastSCN < ws[len(ws)-1].SCN || st.LastHeartbeat.IsZero() || !st.Streaming {
		t.Fatalf("stats: %+v", st)
	}
	time.Sleep(3 * e.cfg.HeartbeatInterval)
	if st := s.Stats(); st.ServerLSN == 0 || st.SlotConfirmedLSN != rel || st.WALStatus == "" {
		t.Fatalf("stats after a refresh: %+v", st)
	}
	r.stop(t)
}

// TestRestartDeterminism releases a position mid-stream, then runs fresh
// adapters (a relay that crashed) from it twice: both must yield the same
// windows, identical to the first run's after that position.
func TestRestartDeterminism(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.t", "public.u")
	e.exec(t, "CREATE TABLE t (id int PRIMARY KEY, v text, at timestamptz, tags text[])", "CREATE TABLE u (k text PRIMARY KEY, n numeric)")
	s, _ := open(t, e.cfg)
	for i := range 20 {
		e.tx(t, fmt.Sprintf("INSERT INTO t VALUES (%d, 'v%d', now(), '{a,b}')", i, i), fmt.Sprintf("INSERT INTO u VALUES ('k%d', %d.5)", i, i))
		switch i {
		case 5:
			e.exec(t, "ALTER TABLE t ADD COLUMN extra int")
		case 12:
			e.exec(t, "ALTER TABLE u ADD COLUMN m int", "UPDATE t SET v = 'w' WHERE id < 3", "DELETE FROM u WHERE k = 'k1'")
		}
	}
	end := e.mark(t)
	r := startRun(t, s, source.Position{})
	first := r.waitSCN(t, end, 60*time.Second)
	checkWindows(t, first)
	data := dataWindows(first)
	release := data[3].Position // before both ALTERs
	if err := s.Release(context.Background(), release); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); e.slotConfirmed(t) != release.SCN; {
		if time.Now().After(deadline) {
			t.Fatalf("slot confirmed %s, want %s", lsnString(e.slotConfirmed(t)), lsnString(release.SCN))
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.stop(t)
	var want []*source.Window
	for _, w := range first {
		if w.SCN > release.SCN {
			want = append(want, w)
		}
	}
	for run := range 2 {
		s2, _ := open(t, e.cfg) // same state directory: a restarted relay
		r2 := startRun(t, s2, release)
		got := r2.waitSCN(t, end, 60*time.Second)
		r2.stop(t)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("run %d from %s differs from the first run (-first +rerun):\n%s", run, lsnString(release.SCN), diff)
		}
		s2.Close()
	}
	if c := e.slotConfirmed(t); c != release.SCN {
		t.Fatalf("slot confirmed %s, beyond the release %s", lsnString(c), lsnString(release.SCN))
	}
}

// TestLargeTransactionStreamed writes a 200k-row transaction with a tiny
// logical_decoding_work_mem, so that the server streams it in chunks (proto
// v2), plus a streamed transaction with a rolled-back subtransaction and a
// streamed transaction that aborts.
func TestLargeTransactionStreamed(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.big")
	e.cfg.ConnString += "&logical_decoding_work_mem=64kB"
	e.exec(t, "CREATE TABLE big (id int PRIMARY KEY, v text)")
	s, _ := open(t, e.cfg)
	const n = 200_000
	e.exec(t, fmt.Sprintf("INSERT INTO big SELECT g, 'row ' || g FROM generate_series(1, %d) g", n))
	e.tx(t, "INSERT INTO big SELECT g, 'sub' FROM generate_series(300001, 302000) g",
		"SAVEPOINT s1", "INSERT INTO big SELECT g, 'gone' FROM generate_series(400001, 402000) g", "ROLLBACK TO SAVEPOINT s1",
		"INSERT INTO big VALUES (500000, 'after')")
	e.exec(t, "BEGIN; INSERT INTO big SELECT g, 'aborted' FROM generate_series(600001, 603000) g; ROLLBACK")
	start := time.Now()
	ws := dataWindows(captureUntilMark(t, e, s, source.Position{}))
	t.Logf("captured %d windows in %v", len(ws), time.Since(start))
	checkWindows(t, ws)
	if len(ws) != 2 {
		t.Fatalf("%d data windows, want 2", len(ws))
	}
	count := func(w *source.Window) (rows int) {
		for _, ev := range w.Events {
			if ev.Kind == event.KindData {
				rows++
			}
		}
		return rows
	}
	if got := count(ws[0]); got != n {
		t.Fatalf("big window: %d rows, want %d", got, n)
	}
	if got := count(ws[1]); got != 2001 {
		t.Fatalf("subtransaction window: %d rows, want 2001", got)
	}
	reg := newRegistry(t, nil)
	for _, w := range ws {
		for i := range w.Events {
			reg.observe(w, &w.Events[i])
		}
	}
	last := &ws[0].Events[len(ws[0].Events)-1]
	if row, _ := reg.decode(last); row["id"] != n || row["v"] != "row "+strconv.Itoa(n) {
		t.Fatalf("last row: %v", row)
	}
	var streamed int64
	if err := e.db.QueryRow("SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = $1", e.name).Scan(&streamed); err != nil {
		t.Fatal(err)
	}
	if streamed < 2 {
		t.Fatalf("the server streamed %d transactions, want at least 2", streamed)
	}
	if st := s.Stats(); st.HeldBytes != 0 {
		t.Fatalf("held %d bytes after the commit", st.HeldBytes)
	}
}

// TestProtocolV1 runs the adapter with pgoutput version 1 (no streaming,
// no heartbeat messages).
func TestProtocolV1(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.t")
	e.cfg.ProtocolVersion = 1
	e.exec(t, "CREATE TABLE t (id int PRIMARY KEY, v text)")
	s, _ := open(t, e.cfg)
	e.exec(t, "INSERT INTO t VALUES (1, 'a')", "UPDATE t SET v = 'b'", "DELETE FROM t")
	e.exec(t, "INSERT INTO t VALUES (2, 'c')")
	var lsn string
	if err := e.db.QueryRow("SELECT pg_current_wal_lsn()::text").Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	r := startRun(t, s, source.Position{})
	deadline := time.Now().Add(20 * time.Second)
	for len(r.snapshot()) < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("%d windows", len(r.snapshot()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.stop(t)
	ws := r.snapshot()
	checkWindows(t, ws)
	got := materialise(t, newRegistry(t, nil), ws)
	if diff := cmp.Diff(map[string]map[string]map[string]any{"public.t": {"2": {"id": 2, "v": "c"}}}, got); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
}

// TestRunErrors covers Run before Open and emit's error.
func TestRunErrors(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.t")
	e.exec(t, "CREATE TABLE t (id int PRIMARY KEY)")
	s, err := New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background(), source.Position{}, nil); !errors.Is(err, ErrNotOpen) {
		t.Fatalf("Run before Open: %v", err)
	}
	s, _ = open(t, e.cfg)
	e.exec(t, "INSERT INTO t VALUES (1)")
	boom := errors.New("boom")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Run(ctx, source.Position{}, func(context.Context, *source.Window) error { return boom }); err != boom {
		t.Fatalf("Run with a failing emit: %v", err)
	}
}
