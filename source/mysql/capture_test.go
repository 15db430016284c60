package mysql

import (
	"database/sql"
	"fmt"
	"math/big"
	"math/rand/v2"
	"regexp"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/internal/dbtest"
	"github.com/databus-go/databus/source"
)

var ratEqual = cmp.Comparer(func(a, b *big.Rat) bool { return a.Cmp(b) == 0 })

// TestMixedTransactions writes multi-statement transactions over three
// tables (one with a composite key) and one table not captured, then reads
// the log: one window per transaction, in order, with its GTID, and the
// materialised rows equal the tables.
func TestMixedTransactions(t *testing.T) {
	srv := dbtest.SharedMariaDB(t)
	dropDatabases(t, srv, "mix", "mixo")
	srv.Exec(t,
		"CREATE DATABASE mix CHARACTER SET utf8mb4",
		"CREATE DATABASE mixo",
		"CREATE TABLE mix.a (id INT PRIMARY KEY, txn INT NOT NULL, v VARCHAR(20))",
		"CREATE TABLE mix.b (id BIGINT UNSIGNED PRIMARY KEY, txn INT NOT NULL, amount DECIMAL(12,2))",
		"CREATE TABLE mix.c (k1 VARCHAR(10), k2 INT, txn INT NOT NULL, note TEXT, PRIMARY KEY (k1, k2))",
		"CREATE TABLE mixo.x (id INT PRIMARY KEY AUTO_INCREMENT, v INT)",
	)
	db := srv.DB(t, "mix")
	cfg := testConfig(t, srv, "mix")
	s, tables := openSource(t, cfg)
	if len(tables) != 3 {
		t.Fatalf("Open: %d tables, want 3: %+v", len(tables), tables)
	}
	from := binlogEnd(t, db)

	// Write: transaction i tags every row it writes with txn = i.
	rng := rand.New(rand.NewPCG(1, 2))
	keysA, keysB, keysC := map[int]bool{}, map[uint64]bool{}, map[string]bool{}
	const n = 40
	want := make([]int, n+1) // data events per transaction
	nextA, nextB := 1, uint64(18446744073709551000)
	for i := 1; i <= n; i++ {
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		exec := func(q string, args ...any) int64 {
			res, err := tx.Exec(q, args...)
			if err != nil {
				t.Fatalf("txn %d: %s: %v", i, q, err)
			}
			k, _ := res.RowsAffected()
			return k
		}
		ops := 1 + rng.IntN(5)
		for range ops {
			switch op := rng.IntN(8); {
			case op == 0 || len(keysA) == 0:
				exec("INSERT INTO a VALUES (?, ?, ?)", nextA, i, fmt.Sprintf("v%d", nextA))
				keysA[nextA] = true
				nextA++
				want[i]++
			case op == 1:
				exec("INSERT INTO b VALUES (?, ?, ?)", nextB, i, fmt.Sprintf("%d.%02d", rng.IntN(1e9)-5e8, rng.IntN(100)))
				keysB[nextB] = true
				nextB++
				want[i]++
			case op == 2:
				k1, k2 := fmt.Sprintf("k%d", rng.IntN(5)), rng.IntN(1000)
				if keysC[k1+"|"+strconv.Itoa(k2)] {
					continue
				}
				exec("INSERT INTO c VALUES (?, ?, ?, ?)", k1, k2, i, "é€ note "+strconv.Itoa(i))
				keysC[k1+"|"+strconv.Itoa(k2)] = true
				want[i]++
			case op == 3:
				id := anyKey(keysA)
				want[i] += int(exec("UPDATE a SET txn = ?, v = ? WHERE id = ?", i, fmt.Sprintf("u%d", i), id))
			case op == 4:
				// A primary-key change: a delete and an insert.
				id := anyKey(keysA)
				exec("UPDATE a SET id = ?, txn = ? WHERE id = ?", nextA, i, id)
				delete(keysA, id)
				keysA[nextA] = true
				nextA++
				want[i] += 2
			case op == 5 && len(keysB) > 0:
				id := anyKey(keysB)
				want[i] += int(exec("DELETE FROM b WHERE id = ?", id))
				delete(keysB, id)
			case op == 6:
				want[i] += int(exec("UPDATE a SET txn = ?, v = CONCAT('m', ?) WHERE id % 3 = 0", i, i))
			default:
				exec("INSERT INTO mixo.x (v) VALUES (?)", i) // not captured
			}
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if rng.IntN(3) == 0 {
			srv.Exec(t, "INSERT INTO mixo.x (v) VALUES (0)") // a transaction of no captured table
		}
	}

	ws := collect(t, s, db, from)
	checkWindows(t, ws)
	reg := newRegistry(t, tables)
	var wantTx []int // the transactions that changed captured rows, in order
	for i := 1; i <= n; i++ {
		if want[i] > 0 {
			wantTx = append(wantTx, i)
		}
	}
	gtid := regexp.MustCompile(`^0-1-(\d+)$`)
	var lastSeq int64
	got := 0 // transactions seen
	for _, w := range ws {
		data := 0
		txn := -1
		for i := range w.Events {
			e := &w.Events[i]
			reg.observe(w, e)
			if e.Kind != event.KindData {
				continue
			}
			data++
			row, _ := reg.decode(e)
			if row == nil {
				continue // a delete: its before-image carries an older txn
			}
			v := row["txn"].(int)
			if txn >= 0 && v != txn {
				t.Fatalf("window %d mixes transactions %d and %d", w.SCN, txn, v)
			}
			txn = v
		}
		if data == 0 {
			continue
		}
		got++
		if got > len(wantTx) {
			t.Fatalf("window %d: more windows with data than the %d transactions", w.SCN, len(wantTx))
		}
		i := wantTx[got-1]
		if txn >= 0 && txn != i {
			t.Fatalf("window %d is transaction %d, want %d", w.SCN, txn, i)
		}
		if data != want[i] {
			t.Errorf("window %d (transaction %d): %d data events, want %d", w.SCN, i, data, want[i])
		}
		m := gtid.FindStringSubmatch(w.TxID)
		if m == nil {
			t.Fatalf("window %d: TxID %q is not a MariaDB GTID of domain 0, server 1", w.SCN, w.TxID)
		}
		seq, _ := strconv.ParseInt(m[1], 10, 64)
		if seq <= lastSeq {
			t.Fatalf("window %d: GTID %s does not follow sequence %d", w.SCN, w.TxID, lastSeq)
		}
		lastSeq = seq
	}
	if got != len(wantTx) {
		t.Fatalf("%d windows with data, want %d", got, len(wantTx))
	}

	// Materialise from the start: the tables were empty at `from`.
	state := materialise(t, newRegistry(t, tables), ws)
	if diff := cmp.Diff(selectAll(t, db), state, ratEqual); diff != "" {
		t.Fatalf("materialised state differs from the tables (-select +stream):\n%s", diff)
	}
}

func anyKey[K comparable](m map[K]bool) K {
	for k := range m {
		return k
	}
	panic("empty")
}

// selectAll reads mix.a, mix.b, mix.c as the Avro decoder would present
// them, keyed like keyString.
func selectAll(t testing.TB, db *sql.DB) map[string]map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]map[string]any{}
	rows, err := db.Query("SELECT id, txn, v FROM mix.a")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, txn int
		var v sql.NullString
		if err := rows.Scan(&id, &txn, &v); err != nil {
			t.Fatal(err)
		}
		addRow(out, "mix.a", strconv.Itoa(id), map[string]any{"id": id, "txn": txn, "v": nullString(v)})
	}
	rows.Close()
	rows, err = db.Query("SELECT id, txn, amount FROM mix.b")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id uint64
		var txn int
		var amount sql.NullString
		if err := rows.Scan(&id, &txn, &amount); err != nil {
			t.Fatal(err)
		}
		var a any
		if amount.Valid {
			r, _ := new(big.Rat).SetString(amount.String)
			a = r
		}
		addRow(out, "mix.b", strconv.FormatUint(id, 10), map[string]any{"id": new(big.Rat).SetUint64(id), "txn": txn, "amount": a})
	}
	rows.Close()
	rows, err = db.Query("SELECT k1, k2, txn, note FROM mix.c")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var k1 string
		var k2, txn int
		var note sql.NullString
		if err := rows.Scan(&k1, &k2, &txn, &note); err != nil {
			t.Fatal(err)
		}
		addRow(out, "mix.c", k1+"|"+strconv.Itoa(k2), map[string]any{"k1": k1, "k2": k2, "txn": txn, "note": nullString(note)})
	}
	rows.Close()
	return out
}

func addRow(out map[string]map[string]map[string]any, table, key string, row map[string]any) {
	if out[table] == nil {
		out[table] = map[string]map[string]any{}
	}
	out[table][key] = row
}

func nullString(s sql.NullString) any {
	if !s.Valid {
		return nil
	}
	return s.String
}

// TestRestartDeterminism runs the adapter twice from the same position:
// the windows are identical, frame for frame.
func TestRestartDeterminism(t *testing.T) {
	srv := dbtest.SharedMariaDB(t)
	dropDatabases(t, srv, "det")
	srv.Exec(t,
		"CREATE DATABASE det CHARACTER SET utf8mb4",
		"CREATE TABLE det.t (id INT PRIMARY KEY, v VARCHAR(20), d DATETIME(6))",
	)
	db := srv.DB(t, "det")
	cfg := testConfig(t, srv, "det")
	s, _ := openSource(t, cfg)
	from := binlogEnd(t, db)
	for i := range 30 {
		srv.Exec(t, fmt.Sprintf("INSERT INTO det.t (id, v, d) VALUES (%d, 'x%d', NOW(6))", i, i))
		if i%10 == 9 {
			srv.Exec(t, fmt.Sprintf("ALTER TABLE det.t ADD COLUMN c%d INT DEFAULT %d", i, i))
		}
	}
	srv.Exec(t, "UPDATE det.t SET v = 'y'", "DELETE FROM det.t WHERE id < 10")
	first := collect(t, s, db, from)
	second := collect(t, s, db, from)
	// A second adapter with the same state directory, as after a relay
	// restart.
	s2, _ := openSource(t, cfg)
	third := collect(t, s2, db, from)
	a := frames(t, first)
	if diff := cmp.Diff(a, frames(t, second)); diff != "" {
		t.Fatalf("second run differs:\n%s", diff)
	}
	if diff := cmp.Diff(a, frames(t, third)); diff != "" {
		t.Fatalf("run of a new adapter differs:\n%s", diff)
	}
	if len(a) < 35 {
		t.Fatalf("only %d windows", len(a))
	}
}

// frames encodes windows for comparison: SCN, timestamp, txid, position
// and every frame's bytes.
func frames(t testing.TB, ws []*source.Window) []string {
	t.Helper()
	var out []string
	for _, w := range ws {
		b := fmt.Appendf(nil, "%d %d %s %s", w.SCN, w.Timestamp, w.TxID, w.Position.Data)
		for i := range w.Events {
			var err error
			if b, err = event.AppendFrame(b, &w.Events[i]); err != nil {
				t.Fatal(err)
			}
		}
		out = append(out, string(b))
	}
	return out
}
