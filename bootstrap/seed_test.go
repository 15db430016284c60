package bootstrap

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/bootstrap/store/sqlitestore"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/internal/dbtest"
	"github.com/databus-go/databus/relay"
	"github.com/databus-go/databus/schema"
	"github.com/databus-go/databus/source/mysql"
)

// mysqlServerIDs gives every replica of the test binary its own id.
var mysqlServerIDs atomic.Uint32

func init() { mysqlServerIDs.Store(4000) }

// mariadbEnv is a database on the shared MariaDB server, a relay capturing
// it and a chunk reader for it.
type mariadbEnv struct {
	srv    *dbtest.MariaDBServer
	name   string
	db     *sql.DB
	relay  *relay.Relay
	reader *mysql.ChunkReader
}

// newMariaDBEnv creates database name with the given tables (statements
// run after USE name), then starts the relay: rows inserted by setup
// predate the relay, so they are in no log.
func newMariaDBEnv(t *testing.T, name string, setup ...string) *mariadbEnv {
	t.Helper()
	return newMariaDBEnvTB(t, name, setup...)
}

func newMariaDBEnvTB(t testing.TB, name string, setup ...string) *mariadbEnv {
	t.Helper()
	srv := dbtest.SharedMariaDB(t)
	srv.Exec(t, "DROP DATABASE IF EXISTS "+name, "CREATE DATABASE "+name+" CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
	srv.Exec(t, append([]string{"USE " + name}, setup...)...)
	cfg := mysql.Config{
		Host: srv.Host, Port: srv.Port, User: "root", ServerID: mysqlServerIDs.Add(1),
		Include: []string{name + ".*"}, StateDir: t.TempDir(), StartAt: mysql.StartAtEnd,
		HeartbeatInterval: 200 * time.Millisecond, MinBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
	}
	src, err := mysql.New(cfg, mysql.WithLogger(testLogger(t, slog.LevelWarn)))
	if err != nil {
		t.Fatal(err)
	}
	r := startRelay(t, src)
	reader, err := mysql.NewChunkReader(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reader.Close() })
	return &mariadbEnv{srv: srv, name: name, db: srv.DB(t, name), relay: r, reader: reader}
}

const bigTable = "CREATE TABLE big (id BIGINT PRIMARY KEY, v VARCHAR(64) NOT NULL, n BIGINT NULL)"

// fill inserts rows 1..n into table big in one statement.
func (e *mariadbEnv) fill(t *testing.T, n int) {
	t.Helper()
	if _, err := e.db.Exec(fmt.Sprintf("INSERT INTO big SELECT seq, CONCAT('row ', seq), IF(seq %% 10 = 0, NULL, seq * 7) FROM seq_1_to_%d", n)); err != nil {
		t.Fatal(err)
	}
}

// state reads the tables (columns id, v, n) as the store should hold them.
func (e *mariadbEnv) state(t testing.TB, tables ...string) map[string]tableState {
	t.Helper()
	out := map[string]tableState{}
	for _, tbl := range tables {
		rows, err := e.db.Query("SELECT id, v, n FROM " + tbl)
		if err != nil {
			t.Fatal(err)
		}
		st := tableState{}
		for rows.Next() {
			var (
				id int64
				v  string
				n  sql.NullInt64
			)
			if err := rows.Scan(&id, &v, &n); err != nil {
				t.Fatal(err)
			}
			row := map[string]any{"id": id, "v": v, "n": nil}
			if n.Valid {
				row["n"] = n.Int64
			}
			st[fmt.Sprint(id)] = row
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
		out[e.name+"."+tbl] = st
	}
	return out
}

// waitSame polls until the store's snapshot equals the tables.
func (e *mariadbEnv) waitSame(t *testing.T, st store.Store, d time.Duration, tables ...string) {
	t.Helper()
	waitSame(t, st, func() map[string]tableState { return e.state(t, tables...) }, d)
}

// churn writes to tables until stop is closed: updates, inserts, deletes
// and key changes over ids up to maxID, in small transactions; with
// truncate, table small is sometimes truncated.
func (e *mariadbEnv) churn(t *testing.T, stop <-chan struct{}, seed uint64, maxID int, tables ...string) func() (int, error) {
	var (
		wg  sync.WaitGroup
		err error
		n   int
	)
	wg.Go(func() {
		rng := rand.New(rand.NewPCG(seed, seed+1))
		// About 300 transactions a second: a busy table, which the stream
		// (under the race detector, on a shared machine) keeps up with.
		tick := time.NewTicker(3 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			tbl := tables[rng.IntN(len(tables))]
			id := 1 + rng.IntN(maxID)
			var q string
			var args []any
			switch rng.IntN(10) {
			case 0, 1, 2, 3:
				q, args = "UPDATE "+tbl+" SET v = CONCAT('upd ', ?), n = n + 1 WHERE id = ?", []any{n, id}
			case 4, 5:
				q, args = "INSERT INTO "+tbl+" (id, v, n) VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v), n = NULL", []any{id, fmt.Sprintf("ins %d", n), n}
			case 6, 7:
				q, args = "DELETE FROM "+tbl+" WHERE id = ?", []any{id}
			case 8:
				// A key change: the binlog has it as an update whose key moves,
				// which the capture turns into a delete and an insert.
				q, args = "UPDATE IGNORE "+tbl+" SET id = id + ? WHERE id = ?", []any{maxID, id}
			case 9:
				if tbl == "small" && rng.IntN(20) == 0 {
					q = "TRUNCATE TABLE small"
				} else {
					q, args = "UPDATE "+tbl+" SET n = NULL WHERE id BETWEEN ? AND ?", []any{id, id + 5}
				}
			}
			if _, err = e.db.Exec(q, args...); err != nil {
				err = fmt.Errorf("%s: %w", q, err)
				return
			}
			n++
		}
	})
	return func() (int, error) { wg.Wait(); return n, err }
}

// seedCfg is a producer configuration seeding the given tables of e.
func (e *mariadbEnv) seedCfg(chunkRows int, tables ...string) Config {
	cfg := testConfig(relayURL(e.relay))
	for _, tb := range tables {
		cfg.Seed.Tables = append(cfg.Seed.Tables, e.name+"."+tb)
	}
	cfg.Seed.ChunkRows = chunkRows
	cfg.Seed.ProgressInterval = 500 * time.Millisecond
	cfg.Seed.ChunkTimeout = 10 * time.Second
	return cfg
}

func seedStatusOf(p *Producer, table string) (SeedStatus, bool) {
	for _, s := range p.SeedStatus() {
		if s.Table == table {
			return s, true
		}
	}
	return SeedStatus{}, false
}

func waitSeedDone(t *testing.T, p *Producer, table string, d time.Duration) SeedStatus {
	t.Helper()
	var s SeedStatus
	waitFor(t, d, "seed of "+table+" to finish", func() bool {
		var ok bool
		s, ok = seedStatusOf(p, table)
		return ok && s.Done
	})
	return s
}

// TestSeedUnderConcurrentWrites: a 20k-row table that existed before the
// relay started (so none of it is in the log) is seeded in chunks of 1000
// while a writer updates, inserts, deletes and moves keys of that table and
// of another one it sometimes truncates. At the end the store's snapshot at
// its head equals both tables.
func TestSeedUnderConcurrentWrites(t *testing.T) {
	e := newMariaDBEnv(t, "seedw", bigTable, "CREATE TABLE small (id BIGINT PRIMARY KEY, v VARCHAR(64) NOT NULL, n BIGINT NULL)")
	e.fill(t, 20000)
	st := openStore(t, filepath.Join(t.TempDir(), "store.db"))
	p := startProducer(t, e.seedCfg(1000, "big"), st, e.reader)

	stop := make(chan struct{})
	wait := e.churn(t, stop, 1, 22000, "big", "small")
	s := waitSeedDone(t, p.Producer, "seedw.big", 40*time.Second)
	time.Sleep(200 * time.Millisecond) // writes after the seed, too
	close(stop)
	writes, err := wait()
	if err != nil {
		t.Fatal(err)
	}
	e.waitSame(t, st, 20*time.Second, "big", "small")
	t.Logf("seeded %d rows (estimate %d) under %d concurrent writes; %v chunks read again", s.Rows, s.Estimate,
		writes, metricValue(p.m.seedRedos))
	if s.Rows < 19000 || s.Estimate == 0 || s.Run == "" {
		t.Errorf("status %+v", s)
	}
	recs, err := st.Seeds(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Table != "seedw.big" || !recs[0].Done || recs[0].Run != s.Run || recs[0].Rows != s.Rows {
		t.Errorf("seed records %+v, status %+v", recs, s)
	}
	if v := metricValue(p.m.seedDone.WithLabelValues("seedw.big")); v != 1 {
		t.Errorf("seed_done %v", v)
	}
	if v := metricValue(p.m.seedRows.WithLabelValues("seedw.big")); v != float64(s.Rows) {
		t.Errorf("seed_rows_total %v, status says %d", v, s.Rows)
	}
	compareLogSeeded(t, st, relayURL(e.relay))
}

// compareLogSeeded checks the log against the relay's stream where seeding
// adds rows: every window the relay served is in the log, in order, with
// the same frames, except that a seeded window has extra insert frames
// before its end-of-window frame.
func compareLogSeeded(t *testing.T, st store.Store, base string) {
	t.Helper()
	s, err := st.State(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := storeLog(t, st, s.LowWatermark, s.Head)
	want := relayStream(t, base, s.LowWatermark, s.Head)
	gs, ws := windowSCNs(t, got), windowSCNs(t, want)
	if fmt.Sprint(gs) != fmt.Sprint(ws) {
		t.Fatalf("the log's windows differ from the relay's: %d vs %d windows", len(gs), len(ws))
	}
	for len(got) > 0 {
		_, gn := windowAt(t, got)
		_, wn := windowAt(t, want)
		gw, ww := got[:gn], want[:wn]
		got, want = got[gn:], want[wn:]
		if string(gw) == string(ww) {
			continue
		}
		// A seeded window: the relay's frames but its end-of-window, then
		// the seeded inserts, then an end-of-window frame counting them.
		_, eowLen := lastFrame(t, ww)
		if string(gw[:len(ww)-eowLen]) != string(ww[:len(ww)-eowLen]) {
			t.Fatal("a window of the log does not start with the relay's frames")
		}
		decodeAll(t, gw) // checks the count
	}
}

// lastFrame returns the offset and length of the last frame of window w.
func lastFrame(t *testing.T, w []byte) (int, int) {
	off := 0
	for {
		n, err := event.FrameLen(w[off:])
		if err != nil {
			t.Fatal(err)
		}
		if off+n == len(w) {
			return off, n
		}
		off += n
	}
}

// TestSeedResumesAfterCursor stops the producer in the middle of a seed;
// a new producer on the store resumes the same run after its cursor,
// reading only the rows that were left.
func TestSeedResumesAfterCursor(t *testing.T) {
	e := newMariaDBEnv(t, "seedr", bigTable)
	e.fill(t, 6000)
	storePath := filepath.Join(t.TempDir(), "store.db")
	st := openStore(t, storePath)
	cfg := e.seedCfg(200, "big")
	cfg.Seed.RowsPerSecond = 6000 // a second or so: time to stop it midway
	p := startProducer(t, cfg, st, e.reader)
	waitFor(t, 15*time.Second, "the seed to be under way", func() bool {
		s, _ := seedStatusOf(p.Producer, "seedr.big")
		return s.Rows >= 1000
	})
	if err := p.stop(); err != nil {
		t.Fatal(err)
	}
	recs, err := st.Seeds(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Done || recs[0].Cursor == "" || recs[0].Rows < 1000 || recs[0].Rows%200 != 0 {
		t.Fatalf("seed record after the stop: %+v", recs)
	}
	stopped := recs[0]
	st.Close()

	st = openStore(t, storePath)
	cfg.Seed.RowsPerSecond = 0
	p2 := startProducer(t, cfg, st, e.reader)
	s := waitSeedDone(t, p2.Producer, "seedr.big", 15*time.Second)
	if s.Run != stopped.Run || s.Rows != 6000 {
		t.Errorf("resumed run %s with %d rows, want run %s with 6000", s.Run, s.Rows, stopped.Run)
	}
	if v := metricValue(p2.m.seedRows.WithLabelValues("seedr.big")); v != float64(6000-stopped.Rows) {
		t.Errorf("the resumed run read %v rows, want the %d left after the cursor", v, 6000-stopped.Rows)
	}
	e.waitSame(t, st, 15*time.Second, "big")
}

// TestReseed seeds a table again while the stream goes on, and checks
// Seed's refusals.
func TestReseed(t *testing.T) {
	e := newMariaDBEnv(t, "seeds", bigTable)
	e.fill(t, 3000)
	st := openStore(t, filepath.Join(t.TempDir(), "store.db"))
	p := startProducer(t, e.seedCfg(300, "big"), st, e.reader)
	first := waitSeedDone(t, p.Producer, "seeds.big", 15*time.Second)

	stop := make(chan struct{})
	wait := e.churn(t, stop, 2, 3500, "big")
	ctx := context.Background()
	run, err := p.Seed(ctx, "seeds.big")
	if err != nil {
		t.Fatal(err)
	}
	if run == first.Run {
		t.Fatal("a new seed run reused the old run's id")
	}
	if again, err := p.Seed(ctx, "seeds.big"); !errors.Is(err, ErrSeedRunning) || again != run {
		t.Errorf("Seed during a run: %q, %v; want %q and ErrSeedRunning", again, err, run)
	}
	if _, err := p.Seed(ctx, "nodot"); !errors.Is(err, ErrConfig) {
		t.Errorf("Seed of a bad name: %v", err)
	}
	waitFor(t, 15*time.Second, "the second run to finish", func() bool {
		s, _ := seedStatusOf(p.Producer, "seeds.big")
		return s.Run == run && s.Done
	})
	close(stop)
	if _, err := wait(); err != nil {
		t.Fatal(err)
	}
	e.waitSame(t, st, 15*time.Second, "big")
	recs, err := st.Seeds(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Run != run || !recs[0].Done {
		t.Errorf("seed records %+v, want run %s done", recs, run)
	}

	if _, err := (&Producer{}).Seed(ctx, "seeds.big"); !errors.Is(err, ErrNoSeeding) {
		t.Errorf("Seed without a chunk reader: %v", err)
	}
	if err := p.stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Seed(ctx, "seeds.big"); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Seed after Run returned: %v", err)
	}
}

// TestSeedTruncatedTable truncates the table being seeded halfway through
// (a TRUNCATE between a chunk's marks voids it), then writes new rows: the
// store ends equal to the table.
func TestSeedTruncatedTable(t *testing.T) {
	e := newMariaDBEnv(t, "seedt", bigTable)
	e.fill(t, 4000)
	st := openStore(t, filepath.Join(t.TempDir(), "store.db"))
	cfg := e.seedCfg(100, "big")
	cfg.Seed.RowsPerSecond = 8000
	p := startProducer(t, cfg, st, e.reader)
	waitFor(t, 15*time.Second, "the seed to be under way", func() bool {
		s, _ := seedStatusOf(p.Producer, "seedt.big")
		return s.Rows >= 1500
	})
	if _, err := e.db.Exec("TRUNCATE TABLE big"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.Exec("INSERT INTO big SELECT seq, 'after', seq FROM seq_1000_to_1200"); err != nil {
		t.Fatal(err)
	}
	waitSeedDone(t, p.Producer, "seedt.big", 15*time.Second)
	if _, err := e.db.Exec("INSERT INTO big VALUES (5000000, 'last', 1)"); err != nil {
		t.Fatal(err)
	}
	e.waitSame(t, st, 15*time.Second, "big")
}

// BenchmarkSeedMariaDB seeds a 200k-row table from MariaDB into a fresh
// store (default chunks of 4096 rows), and reports rows/s beside the
// ceiling measured in the same run: one plain full-table SELECT of the same
// rows through database/sql.
//
//	go test -run '^$' -bench SeedMariaDB -benchtime 3x ./bootstrap/
func BenchmarkSeedMariaDB(b *testing.B) {
	const rows = 200_000
	e := newMariaDBEnvTB(b, "seedbench", bigTable)
	if _, err := e.db.Exec(fmt.Sprintf("INSERT INTO big SELECT seq, CONCAT('row number ', seq, ' of the benchmark'), seq * 7 FROM seq_1_to_%d", rows)); err != nil {
		b.Fatal(err)
	}

	// The ceiling: the same rows in one SELECT, scanned into Go values.
	start := time.Now()
	res, err := e.db.Query("SELECT id, v, n FROM big")
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	for res.Next() {
		var (
			id int64
			v  string
			nn sql.NullInt64
		)
		if err := res.Scan(&id, &v, &nn); err != nil {
			b.Fatal(err)
		}
		n++
	}
	res.Close()
	selectRate := float64(n) / time.Since(start).Seconds()

	// The chunk reader alone: the same keyset reads the seeder makes, with
	// no watermark, no stream and no store.
	var tb *schema.Table
	func() {
		st, err := sqlitestore.Open(filepath.Join(b.TempDir(), "probe.db"), sqlitestore.Options{Sync: sqlitestore.SyncNormal})
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		p, err := NewProducer(testConfig(relayURL(e.relay)), st, nil, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		for tb == nil {
			if t, ok := p.latestTable("seedbench.big"); ok {
				tb = &t
			}
			time.Sleep(time.Millisecond)
		}
		cancel()
		<-done
	}()
	start = time.Now()
	read, cursor := 0, ""
	for {
		evs, next, err := e.reader.ReadChunk(context.Background(), *tb, cursor, DefaultChunkRows)
		if err != nil {
			b.Fatal(err)
		}
		read += len(evs)
		if len(evs) < DefaultChunkRows {
			break
		}
		cursor = next
	}
	readerRate := float64(read) / time.Since(start).Seconds()

	b.ReportAllocs()
	b.ResetTimer()
	var total, applying time.Duration
	for i := 0; i < b.N; i++ {
		st, err := sqlitestore.Open(filepath.Join(b.TempDir(), fmt.Sprintf("store%d.db", i)), sqlitestore.Options{Sync: sqlitestore.SyncNormal})
		if err != nil {
			b.Fatal(err)
		}
		cfg := testConfig(relayURL(e.relay))
		cfg.Seed.Tables = []string{"seedbench.big"}
		p, err := NewProducer(cfg, st, e.reader, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- p.Run(ctx) }()
		for {
			s, ok := seedStatusOf(p, "seedbench.big")
			if ok && s.Done {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		total += time.Since(start)
		cancel()
		<-done
		st.Close()
		applying += time.Duration(histogramSum(p.m.batchSeconds) * float64(time.Second))
	}
	b.StopTimer()
	seedRate := float64(rows) * float64(b.N) / total.Seconds()
	b.ReportMetric(seedRate, "seed_rows/s")
	b.ReportMetric(selectRate, "select_rows/s")
	b.ReportMetric(readerRate, "reader_rows/s")
	b.Logf("seed %.0f rows/s; the chunk reader alone %.0f rows/s; a plain SELECT of the same table %.0f rows/s (seed = %.0f%% of SELECT); "+
		"store Apply took %.0f%% of the seed's time", seedRate, readerRate, selectRate, 100*seedRate/selectRate, 100*applying.Seconds()/total.Seconds())
}

// TestSeedSchemaChange alters the table being seeded halfway through: the
// chunk in flight is void or its read fails with ErrSchemaMismatch, and
// the seed goes on with the version the stream announces (MariaDB's binlog
// announces it with the first row written after the ALTER). Rows seeded
// after the change carry the new column.
func TestSeedSchemaChange(t *testing.T) {
	e := newMariaDBEnv(t, "seeda", bigTable)
	e.fill(t, 3000)
	st := openStore(t, filepath.Join(t.TempDir(), "store.db"))
	cfg := e.seedCfg(100, "big")
	cfg.Seed.RowsPerSecond = 6000
	p := startProducer(t, cfg, st, e.reader)
	waitFor(t, 15*time.Second, "the seed to be under way", func() bool {
		s, _ := seedStatusOf(p.Producer, "seeda.big")
		return s.Rows >= 1000
	})
	if _, err := e.db.Exec("ALTER TABLE big ADD COLUMN w INT NOT NULL DEFAULT 5"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the seed waits for the new version
	if _, err := e.db.Exec("UPDATE big SET v = 'touched' WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	s := waitSeedDone(t, p.Producer, "seeda.big", 15*time.Second)
	if _, err := e.db.Exec("UPDATE big SET v = 'last' WHERE id = 2999"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the last update to be stored", func() bool {
		got, _ := storeState(t, st, []string{"seeda.big"})
		r, ok := got["seeda.big"]["2999"]
		return ok && r["v"] == "last"
	})
	got, _ := storeState(t, st, []string{"seeda.big"})
	want := e.state(t, "big")["seeda.big"]
	withW := 0
	for k, w := range want {
		g, ok := got["seeda.big"][k]
		if !ok {
			t.Fatalf("row %s is missing from the store", k)
		}
		if g["id"] != w["id"] || g["v"] != w["v"] || g["n"] != w["n"] {
			t.Fatalf("row %s: store %v, table %v", k, g, w)
		}
		if _, ok := g["w"]; ok {
			withW++
		}
	}
	if len(got["seeda.big"]) != len(want) || withW < 1000 {
		t.Errorf("store holds %d rows (%d with the new column), table %d", len(got["seeda.big"]), withW, len(want))
	}
	t.Logf("%d rows seeded, %d with the new column; %v chunks read again", s.Rows, withW, metricValue(p.m.seedRedos))
}
