package e2e

import (
	"context"
	"database/sql"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/big"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/client"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/internal/dbtest"
	"github.com/databus-go/databus/relay"
	"github.com/databus-go/databus/source"
	"github.com/databus-go/databus/source/mysql"
)

// This file holds the MariaDB end-to-end tests and the helpers they share
// with postgres_test.go and bench_test.go: a materialiser that compares
// rows through a canonical rendering, a writer of mixed transactions over
// three tables in either SQL dialect, and a `databus relay` subprocess with
// a source section of the test's choosing.

// colKind says how a column's values are compared. The client gives Avro
// decoded values (int, int64, string, []byte, *big.Rat, float64,
// time.Time...), database/sql gives the driver's (int64, []byte, string,
// time.Time...); canon renders both to one string per kind.
type colKind int

const (
	kInt     colKind = iota // integers
	kText                   // character strings
	kBytes                  // binary strings
	kDecimal                // exact decimals: compared as rationals
	kFloat                  // doubles
	kTime                   // date-times with microseconds, rendered in UTC
)

type colDef struct {
	name string
	kind colKind
}

// tableDef describes a captured table for the comparison.
type tableDef struct {
	source string // logical source name, as events carry it
	from   string // the table in a SELECT
	cols   []colDef
	key    []string // key columns, in the order of the event key
}

func (d *tableDef) kind(col string) colKind {
	for _, c := range d.cols {
		if c.name == col {
			return c.kind
		}
	}
	panic("no column " + col + " in " + d.source)
}

// canonRow is a row rendered canonically, by column name.
type canonRow map[string]string

// copyState is every table's rows by rendered key.
type copyState map[string]map[string]canonRow

// canon renders v, a value of a column of kind k.
func canon(k colKind, v any) (string, error) {
	if m, ok := v.(map[string]any); ok && len(m) == 1 { // an Avro union branch
		for _, x := range m {
			v = x
		}
	}
	if v == nil {
		return "NULL", nil
	}
	bad := fmt.Errorf("column kind %d: unexpected %T %v", k, v, v)
	text := func() (string, bool) {
		switch x := v.(type) {
		case string:
			return x, true
		case []byte:
			return string(x), true
		}
		return "", false
	}
	switch k {
	case kInt:
		switch x := v.(type) {
		case int:
			return strconv.Itoa(x), nil
		case int32:
			return strconv.FormatInt(int64(x), 10), nil
		case int64:
			return strconv.FormatInt(x, 10), nil
		case uint64:
			return strconv.FormatUint(x, 10), nil
		}
		if s, ok := text(); ok {
			if _, err := strconv.ParseInt(s, 10, 64); err != nil {
				return "", bad
			}
			return s, nil
		}
	case kText:
		if s, ok := text(); ok {
			return strconv.Quote(s), nil
		}
	case kBytes:
		if b, ok := v.([]byte); ok {
			return "0x" + hex.EncodeToString(b), nil
		}
	case kDecimal:
		if r, ok := v.(*big.Rat); ok {
			return r.RatString(), nil
		}
		if s, ok := text(); ok {
			if r, ok := new(big.Rat).SetString(s); ok {
				return r.RatString(), nil
			}
		}
	case kFloat:
		switch x := v.(type) {
		case float64:
			return strconv.FormatFloat(x, 'g', -1, 64), nil
		case float32:
			return strconv.FormatFloat(float64(x), 'g', -1, 32), nil
		}
		if s, ok := text(); ok {
			if f, err := strconv.ParseFloat(s, 64); err == nil {
				return strconv.FormatFloat(f, 'g', -1, 64), nil
			}
		}
	case kTime:
		const layout = "2006-01-02 15:04:05.000000"
		switch x := v.(type) {
		case time.Time:
			return x.UTC().Format(layout), nil
		case int64: // local-timestamp-micros decoded without its logical type
			return time.UnixMicro(x).UTC().Format(layout), nil
		}
		if s, ok := text(); ok { // MariaDB's text form of DATETIME(6)
			if tm, err := time.Parse("2006-01-02 15:04:05.999999", s); err == nil {
				return tm.Format(layout), nil
			}
		}
	}
	return "", bad
}

// keyOf renders a key from its components.
func keyOf(d *tableDef, vals []any) (string, error) {
	if len(vals) != len(d.key) {
		return "", fmt.Errorf("%s: key of %d components, want %d", d.source, len(vals), len(d.key))
	}
	parts := make([]string, len(vals))
	for i, v := range vals {
		s, err := canon(d.kind(d.key[i]), v)
		if err != nil {
			return "", fmt.Errorf("%s key %s: %w", d.source, d.key[i], err)
		}
		parts[i] = s
	}
	return strings.Join(parts, "|"), nil
}

// readState selects every row of the tables and renders it.
func readState(t testing.TB, db *sql.DB, defs []*tableDef) copyState {
	t.Helper()
	out := copyState{}
	for _, d := range defs {
		names := make([]string, len(d.cols))
		for i, c := range d.cols {
			names[i] = c.name
		}
		rows, err := db.Query("SELECT " + strings.Join(names, ", ") + " FROM " + d.from)
		if err != nil {
			t.Fatal(err)
		}
		st := map[string]canonRow{}
		for rows.Next() {
			vals := make([]any, len(names))
			ptrs := make([]any, len(names))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			row := canonRow{}
			for i, c := range d.cols {
				if row[c.name], err = canon(c.kind, vals[i]); err != nil {
					t.Fatalf("%s.%s: %v", d.source, c.name, err)
				}
			}
			key := make([]string, len(d.key))
			for i, k := range d.key {
				key[i] = row[k]
			}
			st[strings.Join(key, "|")] = row
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
		out[d.source] = st
	}
	return out
}

// rowCopy is a handler that materialises the captured tables by key from
// Event.Row and Event.KeyValues, and checks on the way that windows come in
// strictly increasing SCN order and that each holds exactly one source
// transaction: every row image of a transaction carries the transaction's
// number in column txn, so one window must not mix numbers and one number
// must not appear in two windows.
type rowCopy struct {
	t    testing.TB
	defs map[string]*tableDef

	mu      sync.Mutex
	state   copyState
	scns    []uint64         // windows applied, in order
	txnWin  map[int64]uint64 // transaction number → its window
	events  int
	partial int // updates that left unchanged (TOASTed) columns out
}

func newRowCopy(t testing.TB, defs []*tableDef) *rowCopy {
	m := &rowCopy{t: t, defs: map[string]*tableDef{}, state: copyState{}, txnWin: map[int64]uint64{}}
	for _, d := range defs {
		m.defs[d.source] = d
		m.state[d.source] = map[string]canonRow{}
	}
	return m
}

func (m *rowCopy) OnWindow(_ context.Context, w *client.Window) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n := len(m.scns); n > 0 && w.SCN <= m.scns[n-1] {
		m.t.Errorf("window %d arrived after window %d", w.SCN, m.scns[n-1])
	}
	m.scns = append(m.scns, w.SCN)
	// A key-changing update is a delete of the old key and an insert of the
	// new one; the insert may leave out (PostgreSQL: unchanged TOASTed)
	// columns whose values are those of the row just deleted.
	deleted := map[string]canonRow{}
	var txns []int64
	changes := w.Changes
	// applyChanges applies the TRUNCATE/DROP signals placed before event i.
	applyChanges := func(i int) {
		for len(changes) > 0 && changes[0].At <= i {
			if ch := changes[0]; ch.Truncate || ch.Drop {
				if st := m.state[ch.Table.Name]; st != nil {
					clear(st)
				}
			}
			changes = changes[1:]
		}
	}
	defer applyChanges(len(w.Events))
	for i, e := range w.Events {
		applyChanges(i)
		m.events++
		if e.SCN != w.SCN {
			m.t.Errorf("event of scn %d inside window %d", e.SCN, w.SCN)
		}
		d := m.defs[e.Source]
		if d == nil {
			m.t.Errorf("window %d: event of unexpected source %q", w.SCN, e.Source)
			continue
		}
		kv, err := e.KeyValues()
		if err != nil {
			return err
		}
		key, err := keyOf(d, kv)
		if err != nil {
			m.t.Errorf("window %d: %v", w.SCN, err)
			return err
		}
		st := m.state[e.Source]
		if e.Op == event.OpDelete {
			deleted[e.Source] = st[key]
			delete(st, key)
			continue
		}
		raw, err := e.Row()
		if err != nil {
			return err
		}
		row := canonRow{}
		for _, c := range d.cols {
			v, ok := raw[c.name]
			if !ok {
				m.t.Errorf("window %d: %s row without column %s: %v", w.SCN, e.Source, c.name, raw)
				continue
			}
			if row[c.name], err = canon(c.kind, v); err != nil {
				m.t.Errorf("window %d: %s.%s: %v", w.SCN, e.Source, c.name, err)
			}
		}
		if u, ok := raw["_databus_unchanged"].([]any); ok && len(u) > 0 {
			m.partial++
			prev := st[key]
			if prev == nil {
				prev = deleted[e.Source]
			}
			for _, c := range u {
				name, _ := c.(string)
				if prev == nil {
					m.t.Errorf("window %d: %s %s leaves column %s unchanged, but no previous row is known", w.SCN, e.Source, key, name)
					continue
				}
				row[name] = prev[name]
			}
		}
		rowKey := make([]string, len(d.key))
		for i, k := range d.key {
			rowKey[i] = row[k]
		}
		if rk := strings.Join(rowKey, "|"); rk != key {
			m.t.Errorf("window %d: %s event key %s, but the row's key columns are %s", w.SCN, e.Source, key, rk)
		}
		st[key] = row
		if n, err := strconv.ParseInt(row["txn"], 10, 64); err == nil {
			txns = append(txns, n)
		}
	}
	for _, n := range txns {
		if n != txns[0] {
			m.t.Errorf("window %d holds row images of transactions %d and %d", w.SCN, txns[0], n)
			break
		}
	}
	if len(txns) > 0 {
		if prev, ok := m.txnWin[txns[0]]; ok && prev != w.SCN {
			m.t.Errorf("transaction %d was split across windows %d and %d", txns[0], prev, w.SCN)
		}
		m.txnWin[txns[0]] = w.SCN
	}
	return nil
}

func (m *rowCopy) OnRollback(context.Context, uint64, error) {}

func (m *rowCopy) snapshot() (copyState, []uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := copyState{}
	for name, st := range m.state {
		c := make(map[string]canonRow, len(st))
		for k, v := range st {
			c[k] = v
		}
		out[name] = c
	}
	return out, append([]uint64(nil), m.scns...)
}

func (m *rowCopy) windows() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.scns)
}

// waitCopy polls until the materialised copy equals want, and fails with
// the difference at the deadline.
func waitCopy(t testing.TB, want copyState, m *rowCopy, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got, _ := m.snapshot()
		d := cmp.Diff(want, got, cmpopts.EquateEmpty())
		if d == "" {
			return
		}
		if time.Now().After(deadline) {
			if len(d) > 20000 {
				d = d[:20000] + "\n..."
			}
			t.Fatalf("materialised copy differs from the database (-db +consumer):\n%s", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sameWindows checks that second, the windows a consumer from the start
// saw, begins with exactly first, those of a consumer that lived through a
// relay crash: no gap, no repeat.
func sameWindows(t *testing.T, first, second []uint64) {
	t.Helper()
	if len(first) == 0 {
		t.Fatal("the first consumer saw no window")
	}
	i := sort.Search(len(second), func(i int) bool { return second[i] > first[len(first)-1] })
	if fmt.Sprint(second[:i]) != fmt.Sprint(first) {
		t.Errorf("the restarted relay's windows differ from those served before the crash:\nbefore+after: %v\nfrom start:   %v", first, second[:i])
	}
}

// dialect holds a writer's statements in one SQL dialect; every statement
// takes its arguments in the same order in both.
type dialect struct {
	upsertAcct string // id, owner, balance, amount, note, seen, txn
	bumpAcct   string // txn, id mod 7: many rows
	delAcct    string // id
	upsertTag  string // k1, k2, val, txn
	delTag     string // k1: several rows
	moveTag    string // txn, k1, k2: k2 += 100, a change of the composite key, unless taken
	upsertItem string // id, sku, qty, body, txn
	moveItem   string // txn, id: id += 1000, a change of the key, unless taken
	touchItem  string // txn, id: an update that leaves body alone
	delItem    string // id
	seen       func(time.Time) any
}

var mariadbDialect = &dialect{
	upsertAcct: `INSERT INTO acct (id, owner, balance, amount, note, seen, txn) VALUES (?, ?, ?, ?, ?, ?, ?)
		ON DUPLICATE KEY UPDATE balance = balance + VALUES(balance), amount = VALUES(amount), note = VALUES(note), seen = VALUES(seen), txn = VALUES(txn)`,
	bumpAcct:   `UPDATE acct SET balance = MOD(balance * 2, 1000003), txn = ? WHERE MOD(id, 7) = ?`,
	delAcct:    `DELETE FROM acct WHERE id = ?`,
	upsertTag:  `INSERT INTO tag (k1, k2, val, txn) VALUES (?, ?, ?, ?) ON DUPLICATE KEY UPDATE val = VALUES(val), txn = VALUES(txn)`,
	delTag:     `DELETE FROM tag WHERE k1 = ?`,
	moveTag:    `UPDATE IGNORE tag SET k2 = k2 + 100, txn = ? WHERE k1 = ? AND k2 = ?`,
	upsertItem: `INSERT INTO item (id, sku, qty, body, txn) VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE sku = VALUES(sku), qty = VALUES(qty), body = VALUES(body), txn = VALUES(txn)`,
	moveItem:   `UPDATE IGNORE item SET id = id + 1000, txn = ? WHERE id = ?`,
	touchItem:  `UPDATE item SET qty = qty + 1, txn = ? WHERE id = ?`,
	delItem:    `DELETE FROM item WHERE id = ?`,
	seen:       func(t time.Time) any { return t.Format("2006-01-02 15:04:05.000000") },
}

// mixWriter makes mixed inserts, updates (key-changing ones included) and
// deletes over the three tables, in transactions of 1 to 5 statements.
// Every row image a transaction writes carries its number in column txn.
type mixWriter struct {
	db   *sql.DB
	d    *dialect
	rng  *rand.Rand
	next int64 // next transaction number; a failed attempt's is not reused
}

func newMixWriter(db *sql.DB, d *dialect, seed uint64) *mixWriter {
	return &mixWriter{db: db, d: d, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), next: 1}
}

const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

func (w *mixWriter) text(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = letters[w.rng.IntN(len(letters))]
	}
	return string(b)
}

// statement returns one random statement of transaction n and its arguments.
func (w *mixWriter) statement(n int64) (string, []any) {
	r, d := w.rng, w.d
	id := r.IntN(100)
	k1, k2 := fmt.Sprintf("k%d", r.IntN(8)), r.IntN(20)-10
	switch r.IntN(12) {
	case 0, 1:
		var amount, note, seen any
		if r.IntN(4) > 0 {
			cents := r.IntN(2_000_000) - 1_000_000
			sign := ""
			if cents < 0 {
				sign, cents = "-", -cents
			}
			amount = fmt.Sprintf("%s%d.%02d", sign, cents/100, cents%100)
		}
		if r.IntN(5) > 0 {
			b := make([]byte, r.IntN(40))
			for i := range b {
				b[i] = byte(r.IntN(256))
			}
			note = b
		}
		if r.IntN(5) > 0 {
			seen = d.seen(time.UnixMicro(946684800_000000 + r.Int64N(30*365*86400_000000)).UTC())
		}
		return d.upsertAcct, []any{id, fmt.Sprintf("owner-%d ü 🚀", id), r.Int64N(1000) - 500, amount, note, seen, n}
	case 2:
		return d.bumpAcct, []any{n, r.IntN(7)}
	case 3:
		return d.delAcct, []any{id}
	case 4, 5:
		var val any
		if r.IntN(5) > 0 {
			val = r.Float64()*2000 - 1000
		}
		return d.upsertTag, []any{k1, k2, val, n}
	case 6:
		if r.IntN(3) == 0 {
			return d.delTag, []any{k1}
		}
		return d.moveTag, []any{n, k1, k2}
	case 7, 8:
		var body any
		switch r.IntN(6) {
		case 0:
		case 1, 2: // stored out of line by PostgreSQL (TOAST)
			body = w.text(2500 + r.IntN(1500))
		default:
			body = w.text(r.IntN(30))
		}
		return d.upsertItem, []any{id, w.text(8), r.IntN(1000), body, n}
	case 9:
		if r.IntN(2) == 0 {
			id += 1000
		}
		return d.moveItem, []any{n, id}
	case 10:
		return d.touchItem, []any{n, id}
	default:
		return d.delItem, []any{id}
	}
}

func (w *mixWriter) txn(ctx context.Context) error {
	n := w.next
	w.next++
	tx, err := w.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for i := 1 + w.rng.IntN(5); i > 0; i-- {
		q, args := w.statement(n)
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("%s: %w", strings.Fields(q)[0], err)
		}
	}
	return tx.Commit()
}

// run writes n transactions and stops at the first error.
func (w *mixWriter) run(ctx context.Context, n int) error {
	for i := 0; i < n; i++ {
		if err := w.txn(ctx); err != nil {
			return fmt.Errorf("transaction %d: %w", w.next-1, err)
		}
	}
	return nil
}

// runThrough writes until n transactions have succeeded, retrying after
// failures (a server restarting): it returns the number of failed attempts,
// or an error when no transaction has succeeded for a whole timeout.
func (w *mixWriter) runThrough(ctx context.Context, n int, timeout time.Duration) (failed int, err error) {
	last := time.Now()
	for ok := 0; ok < n; {
		if err := w.txn(ctx); err != nil {
			failed++
			if time.Since(last) > timeout {
				return failed, fmt.Errorf("no transaction succeeded for %v: %w", timeout, err)
			}
			time.Sleep(20 * time.Millisecond)
			continue
		}
		ok++
		last = time.Now()
	}
	return failed, nil
}

// newSourceRelayProcess prepares `databus relay` as a subprocess over the
// source described by sourceYAML (the lines under `source:`), with a
// state directory that survives its restarts.
func newSourceRelayProcess(t *testing.T, sourceYAML string) *relayProcess {
	t.Helper()
	dir := t.TempDir()
	p := &relayProcess{t: t, cfg: filepath.Join(dir, "relay.yaml"), addr: freeAddr(t), log: filepath.Join(dir, "relay.log")}
	cfg := fmt.Sprintf("relay:\n  listen: %s\n  stateDir: %s\n  releaseInterval: 50ms\nsource:\n%s", p.addr, filepath.Join(dir, "state"), sourceYAML)
	if err := os.WriteFile(p.cfg, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			t.Logf("relay log:\n%s", b)
		}
	})
	return p
}

// writing fails the test if the writer whose done channel is given has
// already finished: the fault that follows must hit writes in progress.
func writing(t *testing.T, done <-chan struct{}) {
	t.Helper()
	select {
	case <-done:
		t.Fatal("the writes were over before the fault: the test would prove nothing")
	default:
	}
}

// tbWriter sends log lines to a test's or benchmark's log.
type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func warnLogger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// startSourceRelay runs an in-process relay over src until the test ends.
func startSourceRelay(tb testing.TB, src source.Source, maxBytes relay.ByteSize) *relay.Relay {
	tb.Helper()
	log := warnLogger(tb)
	cfg := relay.Config{Listen: "127.0.0.1:0", StateDir: tb.TempDir(), ReleaseInterval: 50 * time.Millisecond}
	cfg.Buffer.MaxBytes = maxBytes
	r, err := relay.New(cfg, src, log, prometheus.NewRegistry())
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("relay: %v", err)
		}
	})
	select {
	case <-r.Ready():
	case err := <-done:
		done <- err
		tb.Fatalf("relay stopped before opening its source: %v", err)
	case <-time.After(30 * time.Second):
		tb.Fatal("relay did not open its source")
	}
	waitStarted(tb, r)
	return r
}

// waitStarted waits until the relay's buffer holds a first position. Ready
// only says that the source is open: a MariaDB source starting at the end
// of the binlog reads where that end is when its run starts, so a write
// made before then would not be captured. (It emits an empty window there;
// a PostgreSQL source has created its slot in Open already, and its first
// heartbeat comes after its HeartbeatInterval.)
func waitStarted(tb testing.TB, r *relay.Relay) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for r.Buffer().LastSCN() == 0 {
		if time.Now().After(deadline) {
			tb.Fatal("the relay captured no first window in 30s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The MariaDB test tables, in database app (utf8mb4): acct has a single
// integer key and a column of each comparable kind, tag a composite key,
// item a key that updates move.
const mariadbSchema = `CREATE TABLE app.acct (id INT PRIMARY KEY, owner VARCHAR(64) NOT NULL, balance BIGINT NOT NULL,
	amount DECIMAL(12,2) NULL, note VARBINARY(64) NULL, seen DATETIME(6) NULL, txn BIGINT NOT NULL);
CREATE TABLE app.tag (k1 VARCHAR(16) NOT NULL, k2 INT NOT NULL, val DOUBLE NULL, txn BIGINT NOT NULL, PRIMARY KEY (k1, k2));
CREATE TABLE app.item (id BIGINT PRIMARY KEY, sku CHAR(8) NOT NULL, qty INT NOT NULL, body TEXT NULL, txn BIGINT NOT NULL)`

// testDefs are the comparison definitions of the three tables, whose
// logical sources are named prefix.acct, prefix.tag and prefix.item.
func testDefs(prefix string) []*tableDef {
	return []*tableDef{
		{source: prefix + ".acct", from: "acct", key: []string{"id"}, cols: []colDef{
			{"id", kInt}, {"owner", kText}, {"balance", kInt}, {"amount", kDecimal}, {"note", kBytes}, {"seen", kTime}, {"txn", kInt}}},
		{source: prefix + ".tag", from: "tag", key: []string{"k1", "k2"}, cols: []colDef{
			{"k1", kText}, {"k2", kInt}, {"val", kFloat}, {"txn", kInt}}},
		{source: prefix + ".item", from: "item", key: []string{"id"}, cols: []colDef{
			{"id", kInt}, {"sku", kText}, {"qty", kInt}, {"body", kText}, {"txn", kInt}}},
	}
}

// mariadbApp starts a private MariaDB server with the test tables and
// returns it with a pool on database app.
func mariadbApp(t testing.TB, opts ...dbtest.MariaDBOption) (*dbtest.MariaDBServer, *sql.DB) {
	t.Helper()
	srv := dbtest.MariaDB(t, opts...)
	srv.Exec(t, "CREATE DATABASE app CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
	srv.Exec(t, strings.Split(mariadbSchema, ";\n")...)
	return srv, srv.DB(t, "app")
}

// mysqlServerIDs gives every replica of the test binary its own id.
var mysqlServerIDs atomic.Uint32

func init() { mysqlServerIDs.Store(3000) }

// mariadbSource is a MariaDB source over srv capturing database db.
func mariadbSource(t testing.TB, srv *dbtest.MariaDBServer, db, startAt string) *mysql.Source {
	t.Helper()
	src, err := mysql.New(mysql.Config{
		Host: srv.Host, Port: srv.Port, User: "root", ServerID: mysqlServerIDs.Add(1),
		Include: []string{db + ".*"}, StateDir: t.TempDir(), StartAt: startAt,
		HeartbeatInterval: 200 * time.Millisecond, MinBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
	}, mysql.WithLogger(warnLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// TestMariaDBStreamEqualsSource: mixed multi-statement transactions over
// three tables (one with a composite key; key-changing updates included),
// written while a client streams them from an in-process relay over HTTP.
// The client's copy must equal the tables; windows arrive in SCN order,
// each transaction whole.
func TestMariaDBStreamEqualsSource(t *testing.T) {
	srv, db := mariadbApp(t)
	r := startSourceRelay(t, mariadbSource(t, srv, "app", mysql.StartAtEnd), 64<<20)
	m := newRowCopy(t, testDefs("app"))
	runClient(t, []string{relayURL(r)}, m, client.WithStart(checkpoint.Start()))
	if err := newMixWriter(db, mariadbDialect, 1).run(context.Background(), 1000); err != nil {
		t.Fatal(err)
	}
	waitCopy(t, readState(t, db, testDefs("app")), m, 30*time.Second)
	if n := m.windows(); n < 800 {
		t.Fatalf("only %d windows for 1000 transactions", n)
	}
}

// TestMariaDBRelayKill9 kills a `databus relay` subprocess capturing
// MariaDB mid-stream while writes go on, restarts it, and checks that the
// client resumes without loss, that its copy equals the database, and that
// a second client from the start sees exactly the windows the first saw.
// Only data windows are compared: the MySQL adapter's empty windows depend
// on where a run started (see source/mysql's doc).
func TestMariaDBRelayKill9(t *testing.T) {
	srv, db := mariadbApp(t)
	p := newSourceRelayProcess(t, fmt.Sprintf(`  mysql:
    host: %s
    port: %d
    user: root
    serverId: %d
    include: [app.*]
    startAt: oldest
    heartbeatInterval: 200ms
    minBackoff: 20ms
    maxBackoff: 500ms
`, srv.Host, srv.Port, mysqlServerIDs.Add(1)))
	p.start()
	base := "http://" + p.addr
	m := newRowCopy(t, testDefs("app"))
	store := client.NewFileStore(filepath.Join(t.TempDir(), "cp.json"))
	runClient(t, []string{base}, m, client.WithStart(checkpoint.Start()), client.WithCheckpointStore(store))

	w := newMixWriter(db, mariadbDialect, 2)
	ctx := context.Background()
	if err := w.run(ctx, 200); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "client to consume windows before the crash", func() bool { return m.windows() >= 20 })
	var werr error
	done := make(chan struct{})
	go func() { defer close(done); werr = w.run(ctx, 600) }() // writes go on across the crash
	time.Sleep(30 * time.Millisecond)
	writing(t, done)
	p.kill()
	time.Sleep(150 * time.Millisecond)
	p.start()
	<-done
	if werr != nil {
		t.Fatal(werr)
	}
	want := readState(t, db, testDefs("app"))
	waitCopy(t, want, m, 40*time.Second)
	if cp, err := os.ReadFile(store.Path()); err != nil || !strings.Contains(string(cp), `"scn"`) {
		t.Errorf("checkpoint file: %q, %v", cp, err)
	}

	_, first := m.snapshot()
	m2 := newRowCopy(t, testDefs("app"))
	runClient(t, []string{base}, m2, client.WithStart(checkpoint.Start()))
	waitCopy(t, want, m2, 40*time.Second)
	waitFor(t, 10*time.Second, "second client to reach the first's last window", func() bool {
		_, s := m2.snapshot()
		return len(s) > 0 && s[len(s)-1] >= first[len(first)-1]
	})
	_, second := m2.snapshot()
	sameWindows(t, first, second)
	t.Logf("%d data windows", len(first))
}

// TestMariaDBSourceRestart restarts the MariaDB server mid-stream while an
// in-process relay captures and writes go on (retried while the server is
// down): the copy must equal the tables, windows strictly increase (no
// repeat), and capture must have gone on in the binlog file the restarted
// server opened.
func TestMariaDBSourceRestart(t *testing.T) {
	srv, db := mariadbApp(t)
	r := startSourceRelay(t, mariadbSource(t, srv, "app", mysql.StartAtOldest), 64<<20)
	m := newRowCopy(t, testDefs("app"))
	runClient(t, []string{relayURL(r)}, m, client.WithStart(checkpoint.Start()))
	w := newMixWriter(db, mariadbDialect, 3)
	ctx := context.Background()
	if err := w.run(ctx, 150); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "client to consume windows before the restart", func() bool { return m.windows() >= 20 })
	_, before := m.snapshot()
	var (
		failed int
		werr   error
	)
	done := make(chan struct{})
	go func() { defer close(done); failed, werr = w.runThrough(ctx, 600, 30*time.Second) }()
	time.Sleep(50 * time.Millisecond)
	writing(t, done)
	srv.Restart(t)
	<-done
	if werr != nil {
		t.Fatal(werr)
	}
	waitCopy(t, readState(t, db, testDefs("app")), m, 40*time.Second)
	_, scns := m.snapshot()
	if last, firstFile := scns[len(scns)-1], before[0]>>32; last>>32 <= firstFile {
		t.Errorf("no window from the binlog file the restarted server opened: last SCN %#x, first %#x", last, before[0])
	}
	t.Logf("%d windows; %d writes failed while the server restarted", len(scns), failed)
}
