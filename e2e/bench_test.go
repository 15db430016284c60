package e2e

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/client"
	"github.com/databus-go/databus/internal/dbtest"
	"github.com/databus-go/databus/relay"
	"github.com/databus-go/databus/source"
	"github.com/databus-go/databus/source/mysql"
)

// End-to-end benchmarks against private servers, each figure printed
// beside a ceiling measured in the same run:
//
//	go test -run XX -bench 'MariaDB|Postgres' -benchtime 1x ./e2e
//
// DATABUS_BENCH_ROWS sets the rows of the catch-up benchmarks (default
// 200000). They skip, like the tests, when the servers' binaries are
// missing. The relay runs in the benchmark's process with warn-level logs;
// on 2 cores it, the client and the database server share the CPU, as the
// ceiling and the database do. The catch-up figures swing by tens of per
// cent between runs on a shared machine: each is the best of two
// interleaved rounds, and the databases' background work after the bulk
// writes (InnoDB page flushing; autovacuum, checkpoint) is done before
// measuring.

// benchRows is the number of rows of the catch-up benchmarks.
func benchRows() int {
	if n, err := strconv.Atoi(os.Getenv("DATABUS_BENCH_ROWS")); err == nil && n > 0 {
		return n
	}
	return 200_000
}

// benchBuffer holds every window of a catch-up run, so that nothing is
// evicted and what is measured is capture, not eviction.
const benchBuffer = 1 << 30

// counter is a handler that counts data events and signals when it has
// seen want of them.
type counter struct {
	want    int64
	n       atomic.Int64
	reached chan struct{}
	once    sync.Once
}

func newCounter(want int) *counter { return &counter{want: int64(want), reached: make(chan struct{})} }

func (c *counter) OnWindow(_ context.Context, w *client.Window) error {
	if c.n.Add(int64(len(w.Events))) >= c.want {
		c.once.Do(func() { close(c.reached) })
	}
	return nil
}

func (c *counter) OnRollback(context.Context, uint64, error) {}

// benchRelay is an in-process relay that a benchmark stops when it wants.
type benchRelay struct {
	*relay.Relay
	cancel context.CancelFunc
	done   chan error
}

func runBenchRelay(b *testing.B, src source.Source) *benchRelay {
	b.Helper()
	cfg := relay.Config{Listen: "127.0.0.1:0", StateDir: b.TempDir()}
	cfg.Buffer.MaxBytes = benchBuffer
	r, err := relay.New(cfg, src, warnLogger(b), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	br := &benchRelay{Relay: r, cancel: cancel, done: make(chan error, 1)}
	go func() { br.done <- r.Run(ctx) }()
	return br
}

func (r *benchRelay) stop(b *testing.B) {
	r.cancel()
	if err := <-r.done; err != nil {
		b.Error(err)
	}
}

// waitReady waits until the relay has opened its source.
func (r *benchRelay) waitReady(b *testing.B) {
	select {
	case <-r.Ready():
	case err := <-r.done:
		r.done <- err
		b.Fatalf("relay stopped: %v", err)
	case <-time.After(60 * time.Second):
		b.Fatal("relay did not open its source")
	}
}

// benchClient runs a client of r in the background.
func benchClient(b *testing.B, r *benchRelay, h client.Handler, opts ...client.Option) (c *client.Client, stop func()) {
	b.Helper()
	opts = append([]client.Option{client.WithStart(checkpoint.Start()), client.WithRelayRetry(0, time.Millisecond, 50*time.Millisecond)}, opts...)
	c, err := client.New([]string{"http://" + r.Addr()}, h, opts...)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	return c, func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			b.Errorf("client: %v", err)
		}
	}
}

// catchUp starts a relay over src and times it until its buffer holds
// endSCN (ingest) and, when rows > 0, until a client following it from the
// start has received rows events (end to end), which must be all it
// receives. Both run from the relay's start, source Open included.
func catchUp(b *testing.B, src source.Source, endSCN uint64, rows int) (ingest, e2e time.Duration, st client.Stats) {
	b.Helper()
	start := time.Now()
	r := runBenchRelay(b, src)
	defer r.stop(b)
	var h *counter
	var c *client.Client
	if rows > 0 {
		r.waitReady(b)
		h = newCounter(rows)
		var stop func()
		c, stop = benchClient(b, r, h)
		defer stop()
	}
	deadline := time.Now().Add(3 * time.Minute)
	for ingest == 0 || (h != nil && e2e == 0) {
		if ingest == 0 && r.Buffer().LastSCN() >= endSCN {
			ingest = time.Since(start)
		}
		if h != nil && e2e == 0 {
			select {
			case <-h.reached:
				e2e = time.Since(start)
			default:
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("relay at SCN %d of %d, client at %d events of %d after 3 minutes", r.Buffer().LastSCN(), endSCN, countOf(h), rows)
		}
		time.Sleep(time.Millisecond)
	}
	if h != nil {
		// Nothing beyond the backlog, nothing twice.
		time.Sleep(50 * time.Millisecond)
		if got := h.n.Load(); got != int64(rows) {
			b.Fatalf("the client received %d events, want %d", got, rows)
		}
		st = c.Stats()
	}
	return ingest, e2e, st
}

func countOf(h *counter) int64 {
	if h == nil {
		return 0
	}
	return h.n.Load()
}

func rate(rows int, d time.Duration) float64 { return float64(rows) / d.Seconds() }

// --- MariaDB ---------------------------------------------------------------

// mariadbEnd returns the binlog's current end: file, offset and SCN (the
// SCN of the last transaction committed).
func mariadbEnd(b testing.TB, db *sql.DB) (string, uint32, uint64) {
	b.Helper()
	rows, err := db.Query("SHOW MASTER STATUS")
	if err != nil {
		b.Fatal(err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var file string
	var pos uint32
	vals := []any{&file, &pos}
	for len(vals) < len(cols) {
		vals = append(vals, new(sql.RawBytes))
	}
	if !rows.Next() {
		b.Fatal("SHOW MASTER STATUS returned nothing")
	}
	if err := rows.Scan(vals...); err != nil {
		b.Fatal(err)
	}
	n, err := strconv.ParseUint(file[strings.LastIndexByte(file, '.')+1:], 10, 32)
	if err != nil {
		b.Fatal(err)
	}
	return file, pos, n<<32 | uint64(pos)
}

// writeSingleRows inserts n rows into bench.t, each its own autocommit
// transaction, from conns connections with a prepared statement.
func writeSingleRows(b *testing.B, db *sql.DB, n, conns int) time.Duration {
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	stmt, err := db.Prepare("INSERT INTO t VALUES (?, ?, ?, NOW(6), ?, ?)")
	if err != nil {
		b.Fatal(err)
	}
	defer stmt.Close()
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for range conns {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				if _, err := stmt.Exec(i, i*7, "row-"+strconv.FormatInt(i, 10), float64(i)/3, fmt.Sprintf("%d.%02d", i/100, i%100)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return time.Since(start)
}

// mariadbQuiesce waits until InnoDB has flushed the pages the writes
// dirtied, so that its background flushing does not run on the cores the
// measured reads need.
func mariadbQuiesce(b *testing.B, db *sql.DB) {
	b.Helper()
	var pct string
	if err := db.QueryRow("SELECT @@GLOBAL.innodb_max_dirty_pages_pct").Scan(&pct); err != nil {
		b.Fatal(err)
	}
	if _, err := db.Exec("SET GLOBAL innodb_max_dirty_pages_pct = 0"); err != nil {
		b.Fatal(err)
	}
	defer db.Exec("SET GLOBAL innodb_max_dirty_pages_pct = " + pct)
	deadline := time.Now().Add(60 * time.Second)
	for {
		var name string
		var dirty int64
		if err := db.QueryRow("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'").Scan(&name, &dirty); err != nil {
			b.Fatal(err)
		}
		if dirty == 0 || time.Now().After(deadline) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// rawBinlog reads the whole binlog, from the start of its oldest file to
// (endFile, endPos), with a bare go-mysql BinlogSyncer decoding every rows
// event (as the adapter has it decode them), and returns the time it took
// and the rows of bench.t it saw.
func rawBinlog(b *testing.B, srv *dbtest.MariaDBServer, db *sql.DB, endFile string, endPos uint32) (time.Duration, int) {
	b.Helper()
	var first string
	var size any
	if err := db.QueryRow("SHOW BINARY LOGS").Scan(&first, &size); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	syncer := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID: mysqlServerIDs.Add(1), Flavor: gomysql.MariaDBFlavor, Host: srv.Host, Port: uint16(srv.Port), User: "root",
		ParseTime: false, TimestampStringLocation: time.UTC, DiscardGTIDSet: true, EventCacheCount: 1024,
		Logger: warnLogger(b),
	})
	defer syncer.Close()
	st, err := syncer.StartSync(gomysql.Position{Name: first, Pos: 4})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	file, rows := first, 0
	for {
		ev, err := st.GetEvent(ctx)
		if err != nil {
			b.Fatal(err)
		}
		switch e := ev.Event.(type) {
		case *replication.RotateEvent:
			file = string(e.NextLogName)
		case *replication.RowsEvent:
			if string(e.Table.Schema) == "bench" && string(e.Table.Table) == "t" {
				rows += len(e.Rows)
			}
		}
		if file == endFile && ev.Header.LogPos >= endPos && ev.Header.EventType == replication.XID_EVENT {
			return time.Since(start), rows
		}
	}
}

// BenchmarkMariaDBCatchUp (B1): N single-row autocommit transactions are
// written first; then a relay starting at the oldest binlog reads them.
// Reported: relay ingest (until its buffer holds the last transaction) and
// end to end (a fresh relay with one client.Client from the start, until
// the handler has seen N events), beside go-mysql's raw BinlogSyncer
// decoding the same binlog in the same run; each the best of two
// interleaved rounds. Goal: end to end >= 70% of raw and >= 100k rows/s.
func BenchmarkMariaDBCatchUp(b *testing.B) {
	n := benchRows()
	srv := dbtest.MariaDB(b, dbtest.MariaDBArgs("--innodb-log-file-size=256M", "--innodb-buffer-pool-size=256M"))
	srv.Exec(b, "CREATE DATABASE bench CHARACTER SET utf8mb4",
		"CREATE TABLE bench.t (id INT PRIMARY KEY, a BIGINT, s VARCHAR(32), d DATETIME(6), x DOUBLE, dec1 DECIMAL(12,2))")
	db := srv.DB(b, "bench")
	writeDur := writeSingleRows(b, db, n, 4)
	endFile, endPos, endSCN := mariadbEnd(b, db)
	mariadbQuiesce(b, db)

	b.ReportAllocs()
	b.ResetTimer()
	var raw, ingest, e2e time.Duration
	rawRun := func() time.Duration {
		d, rows := rawBinlog(b, srv, db, endFile, endPos)
		if rows != n {
			b.Fatalf("raw BinlogSyncer saw %d rows, want %d", rows, n)
		}
		return d
	}
	for range b.N {
		// The machine is shared and noisy: each figure is the best of two
		// rounds, interleaved so that a slow spell hits all three alike.
		var rd, ind, eed [2]time.Duration
		var st client.Stats
		for i := range 2 {
			rd[i] = rawRun()
			ind[i], _, _ = catchUp(b, mariadbSource(b, srv, "bench", mysql.StartAtOldest), endSCN, 0)
			_, eed[i], st = catchUp(b, mariadbSource(b, srv, "bench", mysql.StartAtOldest), endSCN, n)
			b.Logf("round %d: raw %.0f rows/s; ingest %.0f rows/s; end to end %.0f rows/s (%d requests, %.0f windows each)",
				i+1, rate(n, rd[i]), rate(n, ind[i]), rate(n, eed[i]), st.Requests, float64(st.Windows)/float64(max(st.Requests, 1)))
		}
		raw += min(rd[0], rd[1])
		ingest += min(ind[0], ind[1])
		e2e += min(eed[0], eed[1])
	}
	b.StopTimer()
	total := n * b.N
	rawR, inR, e2eR := rate(total, raw), rate(total, ingest), rate(total, e2e)
	b.ReportMetric(rawR, "raw-rows/s")
	b.ReportMetric(inR, "ingest-rows/s")
	b.ReportMetric(e2eR, "e2e-rows/s")
	b.ReportMetric(100*inR/rawR, "ingest/raw-%")
	b.ReportMetric(100*e2eR/rawR, "e2e/raw-%")
	b.ReportMetric(rate(n, writeDur), "write-txn/s")
	b.Logf("B1 MariaDB catch-up, %d single-row transactions (written at %.0f txn/s): raw go-mysql BinlogSyncer %.0f rows/s; "+
		"relay ingest %.0f rows/s (%.0f%% of raw); end to end to one client %.0f rows/s (%.0f%% of raw; goal >= 70%% and >= 100000)",
		n, rate(n, writeDur), rawR, inR, 100*inR/rawR, e2eR, 100*e2eR/rawR)
}

// latencies is a handler that records, for every event, receipt time minus
// the row's own timestamp (column ts, set by the database at insert).
type latencies struct {
	mu  sync.Mutex
	lat []time.Duration
	bad error
}

func (h *latencies) OnWindow(_ context.Context, w *client.Window) error {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range w.Events {
		row, err := e.Row()
		if err != nil {
			return err
		}
		ts, ok := row["ts"].(time.Time)
		if !ok {
			h.bad = fmt.Errorf("column ts is %T, not a time", row["ts"])
			continue
		}
		h.lat = append(h.lat, now.Sub(ts))
	}
	return nil
}

func (h *latencies) OnRollback(context.Context, uint64, error) {}

// take returns the latencies recorded so far and forgets them.
func (h *latencies) take() ([]time.Duration, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.lat
	h.lat = nil
	return l, h.bad
}

func (h *latencies) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.lat)
}

// paced runs insert about perSec times a second for d from conns
// goroutines, each insert at its slot of a fixed schedule (late ones go at
// once), and returns how many it made and the achieved rate.
func paced(b *testing.B, perSec int, d time.Duration, conns int, insert func() error) (int, float64) {
	period := time.Second / time.Duration(perSec)
	total := int64(d / period)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	start := time.Now()
	for range conns {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= total {
					return
				}
				if wait := time.Until(start.Add(time.Duration(i) * period)); wait > 0 {
					time.Sleep(wait)
				}
				if err := insert(); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return int(total), float64(total) / time.Since(start).Seconds()
}

// liveLatency measures one paced phase of a latency benchmark and reports
// it.
func liveLatency(b *testing.B, name string, h *latencies, perSec int, insert func() error) {
	b.Helper()
	const phase = 5 * time.Second
	if _, err := h.take(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	var all []time.Duration
	var achieved float64
	for range b.N {
		n, r := paced(b, perSec, phase, 4, insert)
		achieved += r
		pollUntil(b, 30*time.Second, "the client to receive the paced rows", func() bool { return h.count() >= n })
		lat, err := h.take()
		if err != nil {
			b.Fatal(err)
		}
		if len(lat) != n {
			b.Fatalf("received %d rows, wrote %d", len(lat), n)
		}
		all = append(all, lat...)
	}
	b.StopTimer()
	slices.Sort(all)
	pct := func(p float64) float64 {
		return float64(all[min(len(all)-1, int(p*float64(len(all))))]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(all[len(all)-1])/float64(time.Millisecond), "max-ms")
	b.ReportMetric(achieved/float64(b.N), "txn/s")
	b.Logf("%s at %d txn/s (achieved %.0f/s, %d rows): commit -> handler latency p50 %.2f ms, p99 %.2f ms, max %.2f ms",
		name, perSec, achieved/float64(b.N), len(all), pct(0.50), pct(0.99), float64(all[len(all)-1])/float64(time.Millisecond))
}

// pollUntil waits for cond, polling every millisecond, and fails at the
// deadline.
func pollUntil(b testing.TB, d time.Duration, what string, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkMariaDBLatency (B6): rows with a TIMESTAMP(6) column set by
// NOW(6) are inserted, each its own transaction, at 1000 and at 5000 per
// second for 5 s each while a client follows a live relay; the handler
// records receipt time minus the row's timestamp (which is the statement's
// start, a little before its commit). Goal: p99 <= 10 ms at 1000/s.
func BenchmarkMariaDBLatency(b *testing.B) {
	srv := dbtest.MariaDB(b, dbtest.MariaDBArgs("--innodb-log-file-size=128M"))
	srv.Exec(b, "CREATE DATABASE lat", "CREATE TABLE lat.t (id BIGINT AUTO_INCREMENT PRIMARY KEY, ts TIMESTAMP(6) NOT NULL)")
	db := srv.DB(b, "lat")
	db.SetMaxIdleConns(8)
	r := runBenchRelay(b, mariadbSource(b, srv, "lat", mysql.StartAtEnd))
	defer r.stop(b)
	r.waitReady(b)
	waitStarted(b, r.Relay)
	h := &latencies{}
	_, stop := benchClient(b, r, h)
	defer stop()
	insert := func() error { _, err := db.Exec("INSERT INTO t (ts) VALUES (NOW(6))"); return err }
	for range 200 { // warm up: connections, schema, the client's position
		if err := insert(); err != nil {
			b.Fatal(err)
		}
	}
	pollUntil(b, 30*time.Second, "the warm-up rows", func() bool { return h.count() >= 200 })
	for _, perSec := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("rate=%d", perSec), func(b *testing.B) {
			liveLatency(b, "B6 MariaDB live", h, perSec, insert)
		})
	}
}

// --- PostgreSQL ------------------------------------------------------------

// postgresMark writes a heartbeat message (flushed by a commit) and returns
// its LSN: every transaction committed before is below it, and the adapter
// makes it a window with exactly that SCN.
func postgresMark(b testing.TB, db *sql.DB) uint64 {
	b.Helper()
	var lsn string
	var xid int64
	if err := db.QueryRow(`SELECT pg_logical_emit_message(false, 'databus', 'heartbeat 0')::text, txid_current()`).Scan(&lsn, &xid); err != nil {
		b.Fatal(err)
	}
	l, err := pglogrepl.ParseLSN(lsn)
	if err != nil {
		b.Fatal(err)
	}
	return uint64(l)
}

// rawPgoutput reads slot up to the message at end with pglogrepl alone:
// START_REPLICATION with the adapter's plugin options and ParseV2 of every
// message. It returns the time taken and the inserts seen.
func rawPgoutput(b *testing.B, connString, slot string, end uint64) (time.Duration, int) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	conn, err := pgconn.Connect(ctx, connString+"&replication=database")
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		Mode:       pglogrepl.LogicalReplication,
		PluginArgs: []string{"proto_version '2'", "publication_names 'databus'", "streaming 'on'", "messages 'true'"},
	}); err != nil {
		b.Fatal(err)
	}
	rows, inStream := 0, false
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			b.Fatal(err)
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok || len(cd.Data) == 0 || cd.Data[0] != pglogrepl.XLogDataByteID {
			continue
		}
		xld, err := pglogrepl.ParseXLogData(cd.Data[1:])
		if err != nil {
			b.Fatal(err)
		}
		m, err := pglogrepl.ParseV2(xld.WALData, inStream)
		if err != nil {
			b.Fatal(err)
		}
		switch m := m.(type) {
		case *pglogrepl.StreamStartMessageV2:
			inStream = true
		case *pglogrepl.StreamStopMessageV2:
			inStream = false
		case *pglogrepl.InsertMessageV2:
			rows++
		case *pglogrepl.LogicalDecodingMessageV2:
			if uint64(m.LSN) >= end {
				return time.Since(start), rows
			}
		}
	}
}

// pgWorkload is a database holding N rows written in transactions of
// perTxn rows after three slots were created: one for the raw loop, one
// for the relay alone, one for the relay with a client. No slot is ever
// confirmed, so every run reads the same WAL.
type pgWorkload struct {
	db       string
	end      uint64
	writeDur time.Duration
}

func preparePgWorkload(b *testing.B, srv *dbtest.PostgresServer, name string, n, perTxn int) *pgWorkload {
	db := srv.DB(b, name)
	for _, s := range []string{
		"CREATE TABLE t (id int PRIMARY KEY, a bigint, s text, d timestamptz, x double precision, n numeric(12,2))",
		"CREATE PUBLICATION databus FOR TABLE t",
	} {
		if _, err := db.Exec(s); err != nil {
			b.Fatal(err)
		}
	}
	for _, slot := range []string{"raw", "ingest", "e2e"} {
		if _, err := db.Exec("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", name+"_"+slot); err != nil {
			b.Fatal(err)
		}
	}
	start := time.Now()
	if _, err := db.Exec(fmt.Sprintf(`DO $$ BEGIN
		FOR i IN 0..%d LOOP
			INSERT INTO t SELECT g, g * 7, 'row-' || g, now(), g / 3.0, g / 100.0
				FROM generate_series(i * %d, i * %d + %d) g;
			COMMIT;
		END LOOP; END $$`, n/perTxn-1, perTxn, perTxn, perTxn-1)); err != nil {
		b.Fatal(err)
	}
	w := &pgWorkload{db: name, writeDur: time.Since(start), end: postgresMark(b, db)}
	// Autovacuum and the checkpointer would otherwise work on the new rows
	// during the first measured read, on the cores the reads need.
	for _, s := range []string{"VACUUM ANALYZE t", "CHECKPOINT"} {
		if _, err := db.Exec(s); err != nil {
			b.Fatal(err)
		}
	}
	return w
}

// BenchmarkPostgresCatchUp (B3, B4): N rows in single-row transactions and
// in 100-row transactions, written after the slots were created; then the
// relay reads them alone (ingest: until its buffer holds the last window)
// and, from a fresh slot, with one client.Client (end to end: until the
// handler has seen N events), beside a raw pglogrepl decode loop over the
// same WAL in the same run; each the best of two interleaved rounds.
// Goal: >= 90% of raw.
//
// The "ceiling" is soft: the relay, with a client especially, often reads
// faster than the raw loop (measured: end to end 124% to 184% of raw with
// single-row transactions). The walsender, not the reader, is the
// bottleneck (about one core); probably it spends more per message on a
// reader that drains its socket at once, as the raw loop doing nothing
// else does, than on a busier one that lets its sends grow. Read a ratio
// above 100% as parity.
func BenchmarkPostgresCatchUp(b *testing.B) {
	n := benchRows()
	srv := dbtest.Postgres(b)
	for _, per := range []int{1, 100} {
		var w *pgWorkload
		b.Run(fmt.Sprintf("rowsPerTxn=%d", per), func(b *testing.B) {
			if w == nil {
				w = preparePgWorkload(b, srv, fmt.Sprintf("w%d", per), n-n%per, per)
			}
			rows := n - n%per
			b.ReportAllocs()
			b.ResetTimer()
			var raw, ingest, e2e time.Duration
			rawRun := func() time.Duration {
				d, got := rawPgoutput(b, srv.ConnString(w.db), w.db+"_raw", w.end)
				if got != rows {
					b.Fatalf("raw pglogrepl saw %d inserts, want %d", got, rows)
				}
				return d
			}
			for range b.N {
				// The machine is shared and noisy: each figure is the best
				// of two rounds, interleaved so that a slow spell hits all
				// three alike.
				var rd, ind, eed [2]time.Duration
				var st client.Stats
				for i := range 2 {
					rd[i] = rawRun()
					ind[i], _, _ = catchUp(b, postgresSource(b, srv, w.db, w.db+"_ingest", []string{"public.t"}), w.end, 0)
					_, eed[i], st = catchUp(b, postgresSource(b, srv, w.db, w.db+"_e2e", []string{"public.t"}), w.end, rows)
					b.Logf("round %d: raw %.0f rows/s; ingest %.0f rows/s; end to end %.0f rows/s (%d requests, %.0f windows each)",
						i+1, rate(rows, rd[i]), rate(rows, ind[i]), rate(rows, eed[i]), st.Requests, float64(st.Windows)/float64(max(st.Requests, 1)))
				}
				raw += min(rd[0], rd[1])
				ingest += min(ind[0], ind[1])
				e2e += min(eed[0], eed[1])
			}
			b.StopTimer()
			total := rows * b.N
			rawR, inR, e2eR := rate(total, raw), rate(total, ingest), rate(total, e2e)
			b.ReportMetric(rawR, "raw-rows/s")
			b.ReportMetric(inR, "ingest-rows/s")
			b.ReportMetric(e2eR, "e2e-rows/s")
			b.ReportMetric(100*inR/rawR, "ingest/raw-%")
			b.ReportMetric(100*e2eR/rawR, "e2e/raw-%")
			b.ReportMetric(rate(rows, w.writeDur), "write-rows/s")
			label := map[int]string{1: "B3", 100: "B4"}[per]
			b.Logf("%s PostgreSQL catch-up, %d rows in %d-row transactions (written at %.0f rows/s): raw pglogrepl %.0f rows/s; "+
				"relay ingest %.0f rows/s (%.0f%% of raw); end to end to one client %.0f rows/s (%.0f%% of raw; goal >= 90%%)",
				label, rows, per, rate(rows, w.writeDur), rawR, inR, 100*inR/rawR, e2eR, 100*e2eR/rawR)
		})
	}
}

// BenchmarkPostgresLatency: rows with a timestamptz column set to
// clock_timestamp() are inserted, each its own transaction, at 1000 per
// second for 5 s with synchronous_commit=on while a client follows a live
// relay; the handler records receipt time minus the row's timestamp.
func BenchmarkPostgresLatency(b *testing.B) {
	srv := dbtest.Postgres(b, dbtest.PostgresSettings("synchronous_commit=on"))
	db := srv.DB(b, "lat")
	db.SetMaxIdleConns(8)
	if _, err := db.Exec("CREATE TABLE t (id bigserial PRIMARY KEY, ts timestamptz NOT NULL)"); err != nil {
		b.Fatal(err)
	}
	r := runBenchRelay(b, postgresSource(b, srv, "lat", "lat", []string{"public.t"}))
	defer r.stop(b)
	r.waitReady(b)
	waitStarted(b, r.Relay)
	h := &latencies{}
	_, stop := benchClient(b, r, h)
	defer stop()
	insert := func() error { _, err := db.Exec("INSERT INTO t (ts) VALUES (clock_timestamp())"); return err }
	for range 200 {
		if err := insert(); err != nil {
			b.Fatal(err)
		}
	}
	pollUntil(b, 30*time.Second, "the warm-up rows", func() bool { return h.count() >= 200 })
	b.Run("rate=1000", func(b *testing.B) {
		liveLatency(b, "PostgreSQL live (synchronous_commit=on)", h, 1000, insert)
	})
}
