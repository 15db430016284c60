package e2e

import (
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"math/rand/v2"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/databus-go/databus/bootstrap"
	"github.com/databus-go/databus/bootstrap/server"
	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/bootstrap/store/pgstore"
	"github.com/databus-go/databus/bootstrap/store/sqlitestore"
	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/client"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/internal/dbtest"
	"github.com/databus-go/databus/relay"
	"github.com/databus-go/databus/source"
	"github.com/databus-go/databus/source/mysql"
	"github.com/databus-go/databus/source/postgres"
)

// This file holds the end-to-end tests of bootstrap seeding. A table is
// filled before its relay starts, so none of its rows is in any log the
// relay reads; the bootstrap producer copies them into its store with the
// watermark seeder while a writer inserts, updates, deletes and moves keys
// of that same table (half of the writes aimed at the chunk being read). A
// brand-new consumer (checkpoint.FullHistory) then bootstraps from the
// bootstrap server, snapshot and catch-up while the writes go on, returns
// to the relay, and its copy must equal SELECT * of the table once the
// writes stop: every pre-existing row came only through the seed, every
// change through the stream, and neither may win over a newer version of
// the other.
//
// Helpers are prefixed with seed: other files of package e2e are written
// by other people at the same time.

// seedTableDef is the comparison definition of the seeded table big, whose
// logical source is named source. Its columns cover the kinds whose seeded
// form (a SELECT through the chunk reader) and captured form (the log)
// must encode identically: integers, text with non-ASCII characters,
// exact decimals, binary strings and microsecond date-times, NULLs
// included.
func seedTableDef(source string) *tableDef {
	return &tableDef{source: source, from: "big", key: []string{"id"}, cols: []colDef{
		{"id", kInt}, {"v", kText}, {"n", kInt}, {"amount", kDecimal}, {"note", kBytes}, {"seen", kTime}}}
}

const (
	seedMariaDBTable = `CREATE TABLE big (id BIGINT PRIMARY KEY, v VARCHAR(64) NOT NULL, n BIGINT NULL,
		amount DECIMAL(12,2) NULL, note VARBINARY(32) NULL, seen DATETIME(6) NULL)`
	// seedMariaDBFill fills big with rows 1..%d (MariaDB's sequence engine).
	seedMariaDBFill = `INSERT INTO big SELECT seq, CONCAT('row ', seq, ' ü'), IF(seq %% 10 = 0, NULL, seq * 7),
		IF(seq %% 7 = 0, NULL, seq * 1.25 - 500), IF(seq %% 5 = 0, NULL, UNHEX(SHA2(seq, 256))),
		IF(seq %% 9 = 0, NULL, TIMESTAMPADD(MICROSECOND, seq * 123456789, '2001-01-01 00:00:00')) FROM seq_1_to_%d`

	seedPostgresTable = `CREATE TABLE big (id bigint PRIMARY KEY, v text NOT NULL, n bigint,
		amount numeric(12,2), note bytea, seen timestamptz)`
	seedPostgresFill = `INSERT INTO big SELECT g, 'row ' || g || ' ü', CASE WHEN g %% 10 = 0 THEN NULL ELSE g * 7 END,
		CASE WHEN g %% 7 = 0 THEN NULL ELSE g * 1.25 - 500 END, CASE WHEN g %% 5 = 0 THEN NULL ELSE sha256(g::text::bytea) END,
		CASE WHEN g %% 9 = 0 THEN NULL ELSE timestamptz '2001-01-01 00:00:00+00' + g * interval '123456789 microseconds' END
		FROM generate_series(1, %d) g`
)

// seedNames makes database and slot names unique within the test binary
// (benchmarks run their setup more than once; -count reruns tests).
var seedNames atomic.Uint32

func seedName(prefix string) string { return fmt.Sprintf("%s%d", prefix, seedNames.Add(1)) }

// seedMariaDBEnv is a database of the shared MariaDB server whose tables
// were created and filled before its relay started, the relay, and a
// chunk reader configured like the relay's source.
type seedMariaDBEnv struct {
	name   string
	db     *sql.DB
	relay  *relay.Relay
	reader *mysql.ChunkReader
}

// seedMariaDB creates database name, runs setup in it, then starts a relay
// capturing name.* from the end of the binlog (the watermark table
// name._databus_watermark included) and a chunk reader.
func seedMariaDB(tb testing.TB, name string, setup ...string) *seedMariaDBEnv {
	tb.Helper()
	srv := dbtest.SharedMariaDB(tb)
	srv.Exec(tb, "DROP DATABASE IF EXISTS "+name, "CREATE DATABASE "+name+" CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
	srv.Exec(tb, append([]string{"USE " + name}, setup...)...)
	cfg := mysql.Config{
		Host: srv.Host, Port: srv.Port, User: "root", ServerID: mysqlServerIDs.Add(1),
		Include: []string{name + ".*"}, StateDir: tb.TempDir(), StartAt: mysql.StartAtEnd,
		HeartbeatInterval: 200 * time.Millisecond, MinBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
	}
	src, err := mysql.New(cfg, mysql.WithLogger(warnLogger(tb)))
	if err != nil {
		tb.Fatal(err)
	}
	r := startSourceRelay(tb, src, 64<<20)
	reader, err := mysql.NewChunkReader(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { reader.Close() })
	return &seedMariaDBEnv{name: name, db: srv.DB(tb, name), relay: r, reader: reader}
}

// seedPostgresEnv is a database of the shared PostgreSQL server whose
// table public.big was created and filled before its relay started, the
// relay (with a slot of its own, dropped when the test ends), and a chunk
// reader configured like the relay's source.
type seedPostgresEnv struct {
	srv    *dbtest.PostgresServer
	name   string
	db     *sql.DB
	relay  *relay.Relay
	reader *postgres.ChunkReader
}

func seedPostgres(tb testing.TB, name string, setup ...string) *seedPostgresEnv {
	tb.Helper()
	srv := dbtest.SharedPostgres(tb)
	db := srv.DB(tb, name)
	for _, s := range setup {
		if _, err := db.Exec(s); err != nil {
			tb.Fatalf("%.80s: %v", s, err)
		}
	}
	slot := name + "_slot"
	// Registered before the relay starts, so it runs after the relay has
	// stopped: slots are server-wide and keep WAL while they exist.
	tb.Cleanup(func() {
		for range 50 {
			var n int
			err := db.QueryRow("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&n)
			if err == nil && n == 0 {
				return
			}
			if _, err = db.Exec("SELECT pg_drop_replication_slot($1)", slot); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond) // the walsender may still hold it for a moment
		}
		tb.Logf("replication slot %s left on the shared server", slot)
	})
	cfg := postgres.Config{
		ConnString: postgres.Secret(srv.ConnString(name)), Tables: []string{"public.big"}, Slot: slot, StateDir: tb.TempDir(),
		HeartbeatInterval: 200 * time.Millisecond, StatusInterval: 200 * time.Millisecond,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
	}
	src, err := postgres.New(cfg, postgres.WithLogger(warnLogger(tb)))
	if err != nil {
		tb.Fatal(err)
	}
	r := startSourceRelay(tb, src, 64<<20)
	reader, err := postgres.NewChunkReader(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { reader.Close() })
	return &seedPostgresEnv{srv: srv, name: name, db: db, relay: r, reader: reader}
}

// seedOpenSQLite opens a bootstrap store in a new SQLite file, closed when
// the test ends (after the producer and server registered later).
func seedOpenSQLite(tb testing.TB) *sqlitestore.Store {
	tb.Helper()
	st, err := sqlitestore.Open(filepath.Join(tb.TempDir(), "bootstrap.db"), sqlitestore.Options{Sync: sqlitestore.SyncNormal})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	return st
}

// seedService is a bootstrap producer and a bootstrap server over one
// store, both running until the test ends.
type seedService struct {
	prod *bootstrap.Producer
	st   store.Store
	url  string // the server's base URL

	prodErr atomic.Pointer[error] // Run's result once it has returned
}

// seedStartService starts a producer that follows relayURL into st and
// seeds with chunks as seed says, and a server over st with the producer
// as its Seeder (as `databus bootstrap` wires them).
func seedStartService(tb testing.TB, relayURL string, st store.Store, chunks source.ChunkReader, seed bootstrap.SeedConfig) *seedService {
	tb.Helper()
	p, err := bootstrap.NewProducer(bootstrap.Config{Relays: []string{relayURL}, Seed: seed}, st, chunks, warnLogger(tb), prometheus.NewRegistry())
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := server.New(server.Config{Listen: "127.0.0.1:0"}, st, warnLogger(tb), prometheus.NewRegistry(), server.WithSeeder(seedSeeder{p}))
	if err != nil {
		tb.Fatal(err)
	}
	s := &seedService{prod: p, st: st}
	ctx, cancel := context.WithCancel(context.Background())
	pdone, sdone := make(chan struct{}), make(chan error, 1)
	go func() {
		defer close(pdone)
		err := p.Run(ctx)
		s.prodErr.Store(&err)
	}()
	go func() { sdone <- srv.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		<-pdone
		if err := *s.prodErr.Load(); err != nil && !errors.Is(err, context.Canceled) {
			tb.Errorf("bootstrap producer: %v", err)
		}
		if err := <-sdone; err != nil {
			tb.Errorf("bootstrap server: %v", err)
		}
	})
	select {
	case <-srv.Ready():
	case err := <-sdone:
		sdone <- err
		tb.Fatalf("bootstrap server stopped before listening: %v", err)
	case <-time.After(10 * time.Second):
		tb.Fatal("bootstrap server did not listen within 10s")
	}
	s.url = "http://" + srv.Addr()
	return s
}

// check fails the test when the producer's Run has returned by itself:
// waiting on would only end in a timeout.
func (s *seedService) check(tb testing.TB) {
	tb.Helper()
	if err := s.prodErr.Load(); err != nil {
		tb.Fatalf("the bootstrap producer stopped: %v", *err)
	}
}

// status returns the producer's status of table's latest seed run.
func (s *seedService) status(table string) (bootstrap.SeedStatus, bool) {
	for _, st := range s.prod.SeedStatus() {
		if st.Table == table {
			return st, true
		}
	}
	return bootstrap.SeedStatus{}, false
}

// waitDone waits until table's latest seed run is done.
func (s *seedService) waitDone(tb testing.TB, table string, d time.Duration) bootstrap.SeedStatus {
	tb.Helper()
	deadline := time.Now().Add(d)
	for {
		s.check(tb)
		st, ok := s.status(table)
		if ok && st.Done {
			return st
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the seed of %s was not done after %v: %+v", table, d, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// seedSeeder adapts the producer to the server's Seeder interface, mapping
// its errors as the CLI does (cmd/databus/bootstrap.go).
type seedSeeder struct{ p *bootstrap.Producer }

func (s seedSeeder) Seed(ctx context.Context, table string) (string, error) {
	run, err := s.p.Seed(ctx, table)
	switch {
	case err == nil:
		return run, nil
	case errors.Is(err, bootstrap.ErrSeedRunning):
		return "", fmt.Errorf("%w: %v", server.ErrSeedRunning, err)
	case errors.Is(err, bootstrap.ErrNoSeeding):
		return "", fmt.Errorf("%w: %v", server.ErrSeedingUnavailable, err)
	case errors.Is(err, bootstrap.ErrConfig):
		return "", fmt.Errorf("%w: %v", server.ErrUnknownTable, err)
	}
	return "", err
}

func (s seedSeeder) SeedStatus() []server.SeedStatus {
	ss := s.p.SeedStatus()
	out := make([]server.SeedStatus, len(ss))
	for i, st := range ss {
		out[i] = server.SeedStatus(st)
	}
	return out
}

// seedInfo is the part of the bootstrap server's GET /v1/info the tests
// read.
type seedInfo struct {
	Seeds []struct {
		Table   string `json:"table"`
		Run     string `json:"run"`
		Rows    uint64 `json:"rows"`
		Done    bool   `json:"done"`
		Running bool   `json:"running"`
		Error   string `json:"error"`
	} `json:"seeds"`
}

func seedGetInfo(tb testing.TB, base string) seedInfo {
	tb.Helper()
	resp, err := http.Get(base + "/v1/info")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var info seedInfo
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("GET /v1/info: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
		tb.Fatalf("GET /v1/info: %v", err)
	}
	return info
}

// seedPost sends POST /v1/seed?table=table and returns the status and the
// decoded JSON body.
func seedPost(tb testing.TB, base, table string) (int, map[string]any) {
	tb.Helper()
	resp, err := http.Post(base+"/v1/seed?table="+url.QueryEscape(table), "", nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		tb.Fatalf("POST /v1/seed: %s with a body that is not JSON: %v", resp.Status, err)
	}
	return resp.StatusCode, body
}

func seedErrorCode(body map[string]any) string {
	e, _ := body["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

// seedSQL are a writer's statements over table big in one SQL dialect.
type seedSQL struct {
	update string // v, amount, seen, id
	upsert string // id, v, n, amount, note, seen
	del    string // id
	move   string // offset, id: id += offset, a change of the key (none when the new key is taken)
	seen   func(time.Time) any
}

var seedMariaDBSQL = &seedSQL{
	update: `UPDATE big SET v = ?, n = n + 1, amount = ?, seen = ? WHERE id = ?`,
	upsert: `INSERT INTO big (id, v, n, amount, note, seen) VALUES (?, ?, ?, ?, ?, ?)
		ON DUPLICATE KEY UPDATE v = VALUES(v), n = VALUES(n), amount = VALUES(amount), note = VALUES(note), seen = VALUES(seen)`,
	del:  `DELETE FROM big WHERE id = ?`,
	move: `UPDATE IGNORE big SET id = id + ? WHERE id = ?`,
	seen: mariadbDialect.seen,
}

var seedPostgresSQL = &seedSQL{
	update: `UPDATE big SET v = $1, n = n + 1, amount = $2::numeric, seen = $3 WHERE id = $4`,
	upsert: `INSERT INTO big (id, v, n, amount, note, seen) VALUES ($1, $2, $3, $4::numeric, $5, $6)
		ON CONFLICT (id) DO UPDATE SET v = excluded.v, n = excluded.n, amount = excluded.amount, note = excluded.note, seen = excluded.seen`,
	del:  `DELETE FROM big WHERE id = $1`,
	move: `UPDATE big SET id = id + $1 WHERE id = $2 AND NOT EXISTS (SELECT 1 FROM big b2 WHERE b2.id = $2 + $1)`,
	seen: postgresDialect.seen,
}

// seedMoveOffset is what a key change adds to a key: beyond every key the
// table was filled with, so a moved row lands in a part of the key space
// that the seed reads last.
const seedMoveOffset = 1_000_000

// seedWriter writes to table big in the background: updates, upserts,
// deletes and key changes, one to three per transaction, up to 100
// transactions a second (more only slows the race detector's runs; the
// seed meets thousands of changes all the same). Half of the keys are
// drawn near hot() (the seed's position), so that changes land in the
// chunk being read, between its watermarks; the others anywhere in
// 1..maxID.
type seedWriter struct {
	stopCh chan struct{}
	done   chan struct{}

	// Set by the writer goroutine, read after done is closed.
	txns    int
	deleted int64 // rows deleted by committed transactions
	moved   int64 // rows whose key committed transactions changed
	err     error
}

func seedStartWriter(db *sql.DB, q *seedSQL, seed uint64, maxID, spread int, hot func() int) *seedWriter {
	w := &seedWriter{stopCh: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
		pick := func() int {
			if hot != nil && rng.IntN(2) == 0 {
				return max(1, hot()+rng.IntN(2*spread)-spread/2)
			}
			return 1 + rng.IntN(maxID)
		}
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-w.stopCh:
				return
			case <-tick.C:
			}
			deleted, moved, err := w.txn(db, q, rng, pick)
			if err != nil {
				w.err = fmt.Errorf("transaction %d: %w", w.txns+1, err)
				return
			}
			w.txns++
			w.deleted += deleted
			w.moved += moved
		}
	}()
	return w
}

func (w *seedWriter) txn(db *sql.DB, q *seedSQL, rng *rand.Rand, pick func() int) (deleted, moved int64, err error) {
	tx, err := db.Begin()
	if err != nil {
		return 0, 0, err
	}
	defer tx.Rollback()
	for i := 1 + rng.IntN(3); i > 0; i-- {
		id := pick()
		var amount, note, seen any
		if rng.IntN(4) > 0 {
			amount = fmt.Sprintf("%d.%02d", rng.IntN(2_000_000)-1_000_000, rng.IntN(100))
		}
		if rng.IntN(4) > 0 {
			b := make([]byte, rng.IntN(33))
			for j := range b {
				b[j] = byte(rng.IntN(256))
			}
			note = b
		}
		if rng.IntN(4) > 0 {
			seen = q.seen(time.UnixMicro(946684800_000000 + rng.Int64N(30*365*86400_000000)).UTC())
		}
		v := fmt.Sprintf("w%d ü %d", w.txns+1, rng.IntN(1000))
		var (
			stmt string
			args []any
		)
		op := rng.IntN(10)
		switch op {
		case 0, 1, 2, 3:
			stmt, args = q.update, []any{v, amount, seen, id}
		case 4, 5:
			stmt, args = q.upsert, []any{id, v, rng.Int64N(1 << 40), amount, note, seen}
		case 6, 7:
			stmt, args = q.del, []any{id}
		default:
			stmt, args = q.move, []any{seedMoveOffset, id}
		}
		res, err := tx.Exec(stmt, args...)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", strings.Fields(stmt)[0], err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return 0, 0, err
		}
		switch {
		case op == 6 || op == 7:
			deleted += n
		case op >= 8:
			moved += n
		}
	}
	return deleted, moved, tx.Commit()
}

// stop stops the writer and returns its first error.
func (w *seedWriter) stop() error {
	select {
	case <-w.stopCh:
	default:
		close(w.stopCh)
	}
	<-w.done
	return w.err
}

// seedCopy is a consumer's handler that materialises one table by key,
// from snapshot pages, catch-up windows and relay windows alike, as a
// BootstrapHandler must: it discards its rows when a new snapshot begins.
// It checks on the way that non-snapshot windows come in strictly
// increasing SCN order after the snapshot's SCN, that snapshot rows are
// inserts no newer than the snapshot, and that every event is of the table
// or of the watermark table (whose events it counts and otherwise ignores).
type seedCopy struct {
	t     testing.TB
	def   *tableDef
	marks string // the watermark table's logical source

	mu         sync.Mutex
	rows       map[string]canonRow
	last       uint64 // SCN of the last window applied; a snapshot page counts as its start SCN
	starts     []client.BootstrapInfo
	ends       []client.BootstrapInfo
	snapRows   int // snapshot rows of the table applied
	logEvents  int // events of the table from catch-up and relay windows
	markEvents int
}

func newSeedCopy(t testing.TB, def *tableDef, marks string) *seedCopy {
	return &seedCopy{t: t, def: def, marks: marks, rows: map[string]canonRow{}}
}

func (m *seedCopy) OnBootstrapStart(_ context.Context, b client.BootstrapInfo) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if b.Snapshot && !b.Resumed {
		clear(m.rows)
		m.last = 0
	}
	m.starts = append(m.starts, b)
	return nil
}

func (m *seedCopy) OnBootstrapEnd(_ context.Context, b client.BootstrapInfo) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ends = append(m.ends, b)
	return nil
}

func (m *seedCopy) OnRollback(context.Context, uint64, error) {}

func (m *seedCopy) OnWindow(_ context.Context, w *client.Window) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if w.Snapshot && w.SCN < m.last || !w.Snapshot && w.SCN <= m.last {
		m.t.Errorf("window %d (snapshot %v) arrived after window %d", w.SCN, w.Snapshot, m.last)
	}
	m.last = w.SCN
	for _, ch := range w.Changes {
		if ch.Truncate || ch.Drop {
			m.t.Errorf("window %d: unexpected TRUNCATE or DROP of %s", w.SCN, ch.Table.Name)
		}
	}
	for _, e := range w.Events {
		if e.Source == m.marks {
			m.markEvents++
			continue
		}
		if e.Source != m.def.source {
			m.t.Errorf("window %d: event of unexpected source %q", w.SCN, e.Source)
			continue
		}
		if w.Snapshot && (e.Op != event.OpInsert || e.SCN > w.SCN) {
			m.t.Errorf("snapshot at %d: %v event of scn %d", w.SCN, e.Op, e.SCN)
		}
		if !w.Snapshot && e.SCN != w.SCN {
			m.t.Errorf("event of scn %d inside window %d", e.SCN, w.SCN)
		}
		kv, err := e.KeyValues()
		if err != nil {
			return err
		}
		if len(kv) != 1 {
			m.t.Errorf("window %d: key of %d components", w.SCN, len(kv))
			continue
		}
		key, err := seedCanon(kInt, kv[0])
		if err != nil {
			m.t.Errorf("window %d: %v", w.SCN, err)
			return err
		}
		if w.Snapshot {
			m.snapRows++
		} else {
			m.logEvents++
		}
		if e.Op == event.OpDelete {
			delete(m.rows, key)
			continue
		}
		raw, err := e.Row()
		if err != nil {
			return err
		}
		if u, ok := raw["_databus_unchanged"].([]any); ok && len(u) > 0 {
			m.t.Errorf("window %d: %s row %s leaves columns %v out, which this table never does", w.SCN, e.Source, key, u)
		}
		row := make(canonRow, len(m.def.cols))
		for _, c := range m.def.cols {
			v, ok := raw[c.name]
			if !ok {
				m.t.Errorf("window %d: %s row without column %s: %v", w.SCN, e.Source, c.name, raw)
				continue
			}
			if row[c.name], err = seedCanon(c.kind, v); err != nil {
				m.t.Errorf("window %d: %s.%s: %v", w.SCN, e.Source, c.name, err)
			}
		}
		if row["id"] != key {
			m.t.Errorf("window %d: event key %s, but the row's id is %s", w.SCN, key, row["id"])
		}
		m.rows[key] = row
	}
	return nil
}

// seedCanon renders v, a value of a column of kind k, as canon does, for
// the kinds of seedTableDef. canon builds its error before it looks at
// the value, which makes rendering 200k rows take tens of seconds under
// the race detector; this one builds it only when it fails.
func seedCanon(k colKind, v any) (string, error) {
	if m, ok := v.(map[string]any); ok && len(m) == 1 { // an Avro union branch
		for _, x := range m {
			v = x
		}
	}
	if v == nil {
		return "NULL", nil
	}
	const layout = "2006-01-02 15:04:05.000000"
	var (
		text   string
		isText bool
	)
	switch x := v.(type) {
	case int:
		if k == kInt {
			return strconv.Itoa(x), nil
		}
	case int32:
		if k == kInt {
			return strconv.FormatInt(int64(x), 10), nil
		}
	case int64:
		switch k {
		case kInt:
			return strconv.FormatInt(x, 10), nil
		case kTime: // local-timestamp-micros decoded without its logical type
			return time.UnixMicro(x).UTC().Format(layout), nil
		}
	case *big.Rat:
		if k == kDecimal {
			return x.RatString(), nil
		}
	case time.Time:
		if k == kTime {
			return x.UTC().Format(layout), nil
		}
	case []byte:
		if k == kBytes {
			return "0x" + hex.EncodeToString(x), nil
		}
		text, isText = string(x), true
	case string:
		text, isText = x, true
	}
	switch {
	case !isText:
	case k == kInt:
		if _, err := strconv.ParseInt(text, 10, 64); err == nil {
			return text, nil
		}
	case k == kText:
		return strconv.Quote(text), nil
	case k == kDecimal:
		if r, ok := new(big.Rat).SetString(text); ok {
			return r.RatString(), nil
		}
	case k == kTime: // MariaDB's text form of DATETIME(6)
		if tm, err := time.Parse("2006-01-02 15:04:05.999999", text); err == nil {
			return tm.Format(layout), nil
		}
	}
	return "", fmt.Errorf("column kind %d: unexpected %T %v", k, v, v)
}

// seedReadTable selects every row of def's table and renders it with
// seedCanon, by key.
func seedReadTable(t testing.TB, db *sql.DB, def *tableDef) map[string]canonRow {
	t.Helper()
	names := make([]string, len(def.cols))
	for i, c := range def.cols {
		names[i] = c.name
	}
	rows, err := db.Query("SELECT " + strings.Join(names, ", ") + " FROM " + def.from)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]canonRow{}
	vals := make([]any, len(names))
	ptrs := make([]any, len(names))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		row := make(canonRow, len(names))
		for i, c := range def.cols {
			if row[c.name], err = seedCanon(c.kind, vals[i]); err != nil {
				t.Fatalf("%s.%s: %v", def.source, c.name, err)
			}
		}
		out[row["id"]] = row
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// diff compares the copy with want (the table's rows by key).
func (m *seedCopy) diff(want map[string]canonRow) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return seedDiff(want, m.rows)
}

// seedDiff describes how got differs from want, naming at most a few rows
// of each kind of difference; "" when they are equal. (cmp.Diff takes too
// long over hundreds of thousands of rows under the race detector.)
func seedDiff(want, got map[string]canonRow) string {
	var missing, extra, differ []string
	for k, w := range want {
		g, ok := got[k]
		switch {
		case !ok:
			missing = append(missing, fmt.Sprintf("  %s: table %v", k, w))
		case !maps.Equal(w, g):
			differ = append(differ, fmt.Sprintf("  %s: table %v, copy %v", k, w, g))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			extra = append(extra, fmt.Sprintf("  %s: copy %v", k, g))
		}
	}
	if len(missing)+len(extra)+len(differ) == 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "the table has %d rows, the copy %d: %d missing from the copy, %d extra, %d different\n",
		len(want), len(got), len(missing), len(extra), len(differ))
	for _, l := range [][]string{missing, extra, differ} {
		slices.Sort(l)
		for _, s := range l[:min(len(l), 8)] {
			b.WriteString(s + "\n")
		}
	}
	return b.String()
}

// seedWaitCopy waits until the consumer c has bootstrapped and gone back
// online past every window the relay held when the wait began, and its
// copy equals want; it fails with the difference at the deadline. want
// must be the table's rows after its last write.
func seedWaitCopy(t testing.TB, c *running, r *relay.Relay, m *seedCopy, want map[string]canonRow, d time.Duration) {
	t.Helper()
	target := r.Buffer().LastSCN()
	deadline := time.Now().Add(d)
	for {
		select {
		case <-c.done:
			t.Fatalf("the consumer stopped: %v", c.err)
		default:
		}
		s := c.Stats()
		online := s.Bootstraps > 0 && s.Phase == client.PhaseOnline && s.Checkpoint >= target
		diff := ""
		if online {
			if diff = m.diff(want); diff == "" {
				return
			}
		}
		if time.Now().After(deadline) {
			if !online {
				t.Fatalf("the consumer did not get back online past scn %d in %v: %+v", target, d, s)
			}
			t.Fatalf("the consumer's copy differs from the table:\n%s", diff)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkBootstrap checks that the consumer bootstrapped exactly once, with
// a new snapshot that delivered rows, and reports the figures.
func (m *seedCopy) checkBootstrap(t testing.TB) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.starts) != 1 || !m.starts[0].Snapshot || m.starts[0].Resumed || len(m.ends) != 1 {
		t.Errorf("bootstrap calls: starts %+v, ends %+v; want one new snapshot and its end", m.starts, m.ends)
	}
	if m.snapRows == 0 {
		t.Error("the snapshot delivered no row of the table")
	}
	if len(m.ends) == 1 {
		t.Logf("consumer: snapshot of %d rows at scn %d, catch-up to scn %d, %d events of the table from the log and the relay, %d watermark events",
			m.snapRows, m.ends[0].StartSCN, m.ends[0].TargetSCN, m.logEvents, m.markEvents)
	}
}

func (m *seedCopy) snapshotRows() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.snapRows
}

// seedCheckProgress checks the seed's progress as the producer, the store
// and the server's /v1/info report it: done, with at least minRows rows.
func seedCheckProgress(t testing.TB, svc *seedService, s bootstrap.SeedStatus, table string, minRows uint64) {
	t.Helper()
	if !s.Done || s.Run == "" || s.Rows < minRows || s.Estimate == 0 {
		t.Errorf("seed status %+v: want done with at least %d rows and an estimate", s, minRows)
	}
	recs, err := svc.st.Seeds(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var rec *store.SeedProgress
	for i := range recs {
		if recs[i].Table == table {
			rec = &recs[i]
		}
	}
	if rec == nil || !rec.Done || rec.Run != s.Run || rec.Rows != s.Rows {
		t.Errorf("the store's seed record of %s is %+v; the producer says %+v", table, rec, s)
	}
	info := seedGetInfo(t, svc.url)
	found := false
	for _, j := range info.Seeds {
		if j.Table == table {
			found = true
			if !j.Done || j.Run != s.Run || j.Rows != s.Rows || j.Running || j.Error != "" {
				t.Errorf("/v1/info reports seed %+v; the producer says %+v", j, s)
			}
		}
	}
	if !found {
		t.Errorf("/v1/info reports no seed of %s: %+v", table, info.Seeds)
	}
}

// TestSeedMariaDB200kUnderWrites seeds a 200k-row MariaDB table that
// predates the relay (its rows are in no log the relay reads) into a SQLite
// bootstrap store, in chunks of 4096 rows, while a writer inserts, updates,
// deletes and moves keys of the same table, half of the time in the chunk
// being read. Once the seed is done, a brand-new consumer bootstraps from
// the bootstrap server while the writes go on, then follows the relay;
// once the writes stop and it has caught up, its copy must equal the table,
// row for row and column for column. The seed's progress must say done,
// in the producer, the store and /v1/info alike, with every row that was
// not deleted before the seed reached it.
func TestSeedMariaDB200kUnderWrites(t *testing.T) {
	const rows, chunk = 200_000, 4096
	name := seedName("seedmaria")
	table := name + ".big"
	e := seedMariaDB(t, name, seedMariaDBTable, fmt.Sprintf(seedMariaDBFill, rows))
	svc := seedStartService(t, relayURL(e.relay), seedOpenSQLite(t), e.reader,
		bootstrap.SeedConfig{Tables: []string{table}, ChunkRows: chunk, ChunkTimeout: 20 * time.Second, ProgressInterval: time.Second})
	seedUnderWrites(t, svc, e.relay, e.db, seedMariaDBSQL, table, name+"."+source.WatermarkTableName, rows, chunk)
}

// TestSeedPostgresUnderWrites is TestSeedMariaDB200kUnderWrites on
// PostgreSQL, with a 100k-row table and the bootstrap store in PostgreSQL
// too (package pgstore, in a schema of its own of the same database), so
// that both store implementations run seeding end to end. The watermark
// table public._databus_watermark does not exist when the seed starts:
// the chunk reader creates it and adds it to the relay's publication.
func TestSeedPostgresUnderWrites(t *testing.T) {
	const rows, chunk = 100_000, 2048
	name := seedName("seedpg")
	e := seedPostgres(t, name, seedPostgresTable, fmt.Sprintf(seedPostgresFill, rows), "ANALYZE big")
	st, err := pgstore.Open(context.Background(), e.srv.ConnString(name), pgstore.Options{Schema: "databus_bootstrap"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	svc := seedStartService(t, relayURL(e.relay), st, e.reader,
		bootstrap.SeedConfig{Tables: []string{"public.big"}, ChunkRows: chunk, ChunkTimeout: 20 * time.Second, ProgressInterval: time.Second})
	seedUnderWrites(t, svc, e.relay, e.db, seedPostgresSQL, "public.big", "public."+source.WatermarkTableName, rows, chunk)
}

// seedUnderWrites is the body of the two tests above, once the table is
// filled and the service started: it writes while the seed runs and while
// a new consumer bootstraps, then compares.
func seedUnderWrites(t *testing.T, svc *seedService, r *relay.Relay, db *sql.DB, q *seedSQL, table, marks string, rows, chunk int) {
	start := time.Now()
	w := seedStartWriter(db, q, uint64(rows), rows+rows/20, chunk, func() int {
		s, _ := svc.status(table)
		return int(s.Rows)
	})
	defer w.stop()
	s := svc.waitDone(t, table, 120*time.Second)
	seeded := time.Since(start)

	// A new consumer bootstraps while the writes go on through the first
	// quarter of its snapshot: most rows they change have not been sent
	// yet and must be left out of the snapshot, their changes replayed by
	// the catch-up; then it follows the relay. (Writing through the whole
	// snapshot proves no more and costs seconds under the race detector.)
	def := seedTableDef(table)
	m := newSeedCopy(t, def, marks)
	t0 := time.Now()
	c := runClient(t, []string{relayURL(r)}, m, client.WithStart(checkpoint.FullHistory()), client.WithBootstrap(svc.url))
	waitFor(t, 60*time.Second, "a quarter of the consumer's snapshot", func() bool {
		svc.check(t)
		return m.snapshotRows() >= rows/4 || c.Stats().Bootstraps > 0
	})
	if err := w.stop(); err != nil {
		t.Fatal(err)
	}
	if w.txns < 100 || w.deleted == 0 || w.moved == 0 {
		t.Fatalf("the writer made %d transactions, %d deletes and %d key changes: too few to prove anything", w.txns, w.deleted, w.moved)
	}
	want := seedReadTable(t, db, def)
	seedWaitCopy(t, c, r, m, want, 60*time.Second)
	bootstrapped := time.Since(t0)
	m.checkBootstrap(t)
	// A row is missing from the seed only if it was deleted before the seed
	// read it; a moved row is read under its new key, beyond the filled ones.
	seedCheckProgress(t, svc, s, table, uint64(rows)-uint64(w.deleted))
	t.Logf("seeded %d rows (estimate %d) in %v, under %d transactions (%d rows deleted, %d keys changed); the table now has %d rows; "+
		"the consumer's copy equalled it %v after it started", s.Rows, s.Estimate, seeded.Round(time.Millisecond), w.txns, w.deleted, w.moved,
		len(want), bootstrapped.Round(time.Millisecond))
}

// TestSeedAgainWhileStreaming seeds a table, then changes rows of it
// behind the relay's back (sql_log_bin=0: updates and inserts that no log
// carries, as a restore from a backup would), and seeds it again with POST
// /v1/seed on the bootstrap server while a writer keeps changing the table
// through the log. A second POST during the run gets 409 seed_running, a
// bad table name 400 unknown_source. Once the new run is done, a new
// consumer's copy equals the table: the hidden changes can only have come
// from the second run, and the concurrent writes were not undone by it.
func TestSeedAgainWhileStreaming(t *testing.T) {
	const rows = 20_000
	name := seedName("seedagain")
	table := name + ".big"
	e := seedMariaDB(t, name, seedMariaDBTable, fmt.Sprintf(seedMariaDBFill, rows))
	svc := seedStartService(t, relayURL(e.relay), seedOpenSQLite(t), e.reader, bootstrap.SeedConfig{
		Tables: []string{table}, ChunkRows: 1000, RowsPerSecond: 20_000, ChunkTimeout: 20 * time.Second, ProgressInterval: time.Second})
	first := svc.waitDone(t, table, 30*time.Second)

	conn, err := e.db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	hidden := []string{
		"SET SESSION sql_log_bin = 0",
		"UPDATE big SET v = CONCAT('hidden ', id), amount = NULL WHERE id % 97 = 0",
		fmt.Sprintf("INSERT INTO big (id, v, n) SELECT seq, CONCAT('hidden new ', seq), seq FROM seq_%d_to_%d", 2*seedMoveOffset, 2*seedMoveOffset+99),
		"SET SESSION sql_log_bin = 1",
	}
	for _, s := range hidden {
		if _, err := conn.ExecContext(context.Background(), s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	conn.Close()

	w := seedStartWriter(e.db, seedMariaDBSQL, 7, rows+rows/20, 1000, nil)
	defer w.stop()
	time.Sleep(200 * time.Millisecond)
	code, body := seedPost(t, svc.url, table)
	run, _ := body["run"].(string)
	if code != http.StatusAccepted || body["table"] != table || run == "" || run == first.Run {
		t.Fatalf("POST /v1/seed: %d %v; want 202 with a new run of %s (the first was %s)", code, body, table, first.Run)
	}
	if code, body := seedPost(t, svc.url, table); code != http.StatusConflict || seedErrorCode(body) != "seed_running" {
		t.Errorf("a second POST /v1/seed during the run: %d %v; want 409 seed_running", code, body)
	}
	if code, body := seedPost(t, svc.url, "nodot"); code != http.StatusBadRequest || seedErrorCode(body) != "unknown_source" {
		t.Errorf("POST /v1/seed?table=nodot: %d %v; want 400 unknown_source", code, body)
	}
	var again bootstrap.SeedStatus
	waitFor(t, 30*time.Second, "the second run to be done in /v1/info", func() bool {
		svc.check(t)
		for _, j := range seedGetInfo(t, svc.url).Seeds {
			if j.Table == table && j.Run == run && j.Done {
				return true
			}
		}
		return false
	})
	again, _ = svc.status(table)
	time.Sleep(200 * time.Millisecond) // writes after the run, too
	if err := w.stop(); err != nil {
		t.Fatal(err)
	}
	if w.txns < 50 {
		t.Fatalf("only %d transactions during the second run", w.txns)
	}
	def := seedTableDef(table)
	want := seedReadTable(t, e.db, def)
	m := newSeedCopy(t, def, name+"."+source.WatermarkTableName)
	c := runClient(t, []string{relayURL(e.relay)}, m, client.WithStart(checkpoint.FullHistory()), client.WithBootstrap(svc.url))
	seedWaitCopy(t, c, e.relay, m, want, 30*time.Second)
	m.checkBootstrap(t)
	seedCheckProgress(t, svc, again, table, uint64(rows)-uint64(w.deleted))
	t.Logf("first run %s: %d rows; second run %s: %d rows under %d transactions", first.Run, first.Rows, again.Run, again.Rows, w.txns)
}
