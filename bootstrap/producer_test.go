package bootstrap

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/relay"
	"github.com/databus-go/databus/source/sqlite"
)

// TestProducerFollowsStream: mixed transactions (inserts, updates, key
// changes, deletes, whole-table deletes) on a SQLite source, captured by a
// relay and followed by the producer. The store's snapshot at its head
// equals the tables, and its log is byte for byte what the relay served.
func TestProducerFollowsStream(t *testing.T) {
	path, db := newSQLiteDB(t)
	r := startSQLiteRelay(t, path)
	st := openStore(t, filepath.Join(t.TempDir(), "store.db"))
	p := startProducer(t, testConfig(relayURL(r)), st, nil)
	if err := newSQLiteWriter(db, 1).run(context.Background(), 250); err != nil {
		t.Fatal(err)
	}
	waitSame(t, st, func() map[string]tableState { return sqliteState(t, db) }, 20*time.Second)
	compareLog(t, st, relayURL(r))

	s, err := st.State(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.Windows < 100 {
		t.Errorf("only %d windows for 250 transactions (some change nothing)", s.Windows)
	}
	schemas, err := st.Schemas(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(schemas) != 2 {
		t.Errorf("the store holds %d schema versions, want 2 (acct, tag)", len(schemas))
	}
	if got := metricValue(p.m.windows); got < float64(s.Windows) {
		t.Errorf("windows_applied_total %v < %d windows in the store", got, s.Windows)
	}
	if b := metricValue(p.m.batches); b == 0 {
		t.Error("no batch counted")
	}
	if err := p.stop(); err != nil {
		t.Fatal(err)
	}
}

// TestProducerRestartResumes stops the producer (ctx cancel) three times
// while writes go on, and starts a new one on the store each time: the log
// must still be exactly the relay's stream (no gap, no window twice) and
// the snapshot the tables.
func TestProducerRestartResumes(t *testing.T) {
	path, db := newSQLiteDB(t)
	r := startSQLiteRelay(t, path)
	storePath := filepath.Join(t.TempDir(), "store.db")
	st := openStore(t, storePath)
	cfg := testConfig(relayURL(r))
	cfg.MaxBatchWindows = 8 // many batches, so a stop lands between two

	var (
		wg   sync.WaitGroup
		werr error
	)
	wg.Go(func() { werr = newSQLiteWriter(db, 2).run(context.Background(), 600) })
	var last uint64
	for i := 0; i < 3; i++ {
		p := startProducer(t, cfg, st, nil)
		waitFor(t, 20*time.Second, "the producer to commit windows", func() bool {
			s, err := st.State(context.Background())
			return err == nil && s.Windows > 0 && s.Head > last+20
		})
		if err := p.stop(); err != nil {
			t.Fatalf("stop %d: %v", i, err)
		}
		s, err := st.State(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		last = s.Head
		if i == 1 { // the store reopened, too
			st.Close()
			st = openStore(t, storePath)
		}
	}
	startProducer(t, cfg, st, nil)
	wg.Wait()
	if werr != nil {
		t.Fatal(werr)
	}
	waitSame(t, st, func() map[string]tableState { return sqliteState(t, db) }, 20*time.Second)
	compareLog(t, st, relayURL(r))
}

// TestProducerApplyFailureRestarts: Apply fails three times (twice in a
// row); the producer restarts from the store's head each time, skipping
// nothing and repeating nothing.
func TestProducerApplyFailureRestarts(t *testing.T) {
	path, db := newSQLiteDB(t)
	r := startSQLiteRelay(t, path)
	real := openStore(t, filepath.Join(t.TempDir(), "store.db"))
	fs := &faultyStore{Store: real, fail: func(n int, b *store.Batch) bool { return n == 4 || n == 5 || n == 12 }}
	cfg := testConfig(relayURL(r))
	cfg.MaxBatchWindows = 4
	p := startProducer(t, cfg, fs, nil)
	if err := newSQLiteWriter(db, 3).run(context.Background(), 300); err != nil {
		t.Fatal(err)
	}
	waitSame(t, real, func() map[string]tableState { return sqliteState(t, db) }, 20*time.Second)
	compareLog(t, real, relayURL(r))
	if fs.failures() != 3 {
		t.Errorf("%d injected failures, want 3", fs.failures())
	}
	if n := metricValue(p.m.restarts); n != 3 {
		t.Errorf("%v restarts, want 3", n)
	}
	if n := metricValue(p.m.applyErrors); n != 3 {
		t.Errorf("%v apply errors, want 3", n)
	}
}

// TestTwoProducersShareStore: two producers on two handles of one store
// file follow the same relay. Each Apply that loses the race fails with
// ErrConflict and its producer restarts from the head the other wrote: the
// log stays exactly the relay's stream.
func TestTwoProducersShareStore(t *testing.T) {
	path, db := newSQLiteDB(t)
	r := startSQLiteRelay(t, path)
	storePath := filepath.Join(t.TempDir(), "store.db")
	st1 := openStore(t, storePath)
	st2 := openStore(t, storePath)
	cfg := testConfig(relayURL(r))
	cfg.MaxBatchWindows = 2
	p1 := startProducer(t, cfg, st1, nil)
	p2 := startProducer(t, cfg, st2, nil)
	if err := newSQLiteWriter(db, 4).run(context.Background(), 300); err != nil {
		t.Fatal(err)
	}
	waitSame(t, st1, func() map[string]tableState { return sqliteState(t, db) }, 20*time.Second)
	compareLog(t, st2, relayURL(r))
	t.Logf("apply errors (conflicts): %v and %v", metricValue(p1.m.applyErrors), metricValue(p2.m.applyErrors))
}

// TestProducerGap: an empty store starts after the relay's low watermark
// (the log serves checkpoints from there); a store whose head the relay no
// longer holds is refused with a *GapError that says what to do.
func TestProducerGap(t *testing.T) {
	path, db := newSQLiteDB(t)
	src, err := sqlite.New(sqlite.Config{Path: path, Tables: sqliteTables, PollInterval: 2 * time.Millisecond, HeartbeatInterval: -1},
		testLogger(t, slog.LevelWarn))
	if err != nil {
		t.Fatal(err)
	}
	cfg := relay.Config{Listen: "127.0.0.1:0", StateDir: t.TempDir(), ReleaseInterval: 20 * time.Millisecond}
	cfg.Buffer.MaxBytes = 64 << 10
	r, err := relay.New(cfg, src, testLogger(t, slog.LevelWarn), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-r.Ready()
	// Fill the 64 KiB buffer several times over: the oldest windows go.
	if _, err := db.Exec(`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 40)
		INSERT INTO tag(k1, k2, val, txn) SELECT 'fill', i, 0, 0 FROM n`); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 300; i++ {
		if _, err := db.Exec(`UPDATE tag SET txn = txn + 1, k1 = ? WHERE k2 = ?`, strings.Repeat("x", 200+i%7), i%40+1); err != nil {
			t.Fatal(err)
		}
	}
	var lw uint64
	waitFor(t, 10*time.Second, "the relay to evict windows", func() bool {
		lw = relayLW(t, relayURL(r))
		return lw > 0
	})

	// An empty store starts after the low watermark.
	st := openStore(t, filepath.Join(t.TempDir(), "store.db"))
	p := startProducer(t, testConfig(relayURL(r)), st, nil)
	waitFor(t, 10*time.Second, "the producer to start", func() bool {
		s, err := st.State(context.Background())
		return err == nil && !s.Empty
	})
	s, _ := st.State(context.Background())
	if s.LowWatermark < lw {
		t.Errorf("store low watermark %d, below the relay's %d when the producer started", s.LowWatermark, lw)
	}
	if err := p.stop(); err != nil {
		t.Fatal(err)
	}

	// A store whose head is older than what the relay holds.
	old := openStore(t, filepath.Join(t.TempDir(), "old.db"))
	if err := old.Apply(context.Background(), &store.Batch{After: 1, Seeds: []store.SeedProgress{{Table: "main.tag", Run: "r"}}}); err != nil {
		t.Fatal(err)
	}
	pOld, err := NewProducer(testConfig(relayURL(r)), old, nil, testLogger(t, slog.LevelWarn), nil)
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer rcancel()
	err = pOld.Run(rctx)
	var gap *GapError
	if !errors.As(err, &gap) {
		t.Fatalf("Run returned %v, want a *GapError", err)
	}
	if gap.Head != 1 || !strings.Contains(err.Error(), "re-create the store") {
		t.Errorf("gap error %q (head %d)", err, gap.Head)
	}
}

func relayLW(t testing.TB, base string) uint64 {
	resp, err := http.Get(base + "/v1/buffer")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b struct {
		LowWatermark uint64 `json:"lowWatermark"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&b); err != nil {
		t.Fatal(err)
	}
	return b.LowWatermark
}

func TestConfig(t *testing.T) {
	var c struct {
		P Config `yaml:"producer"`
	}
	in := `producer:
  relays: [http://r1:8080/, http://r2:8080]
  maxBatchBytes: 2MiB
  logRetention: 0s
  seed:
    tables: [shop.orders, shop.items]
    chunkRows: 100
`
	if err := yaml.Unmarshal([]byte(in), &c); err != nil {
		t.Fatal(err)
	}
	if err := c.P.Validate(); err != nil {
		t.Fatal(err)
	}
	d := c.P.WithDefaults()
	if d.MaxBatchBytes != 2*relay.MiB || d.MaxBatchWindows != DefaultMaxBatchWindows || *d.LogRetention != 0 ||
		*d.TombstoneRetention != DefaultTombstoneRetention || d.PurgeInterval != time.Hour || d.Seed.ChunkRows != 100 ||
		d.Seed.ProgressInterval != DefaultProgressInterval {
		t.Errorf("defaults: %+v", d)
	}
	p, err := NewProducer(c.P, openStore(t, filepath.Join(t.TempDir(), "s.db")), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.watermarkTable() != "shop._databus_watermark" || p.cfg.Relays[0] != "http://r1:8080" {
		t.Errorf("watermark table %q, relays %q", p.watermarkTable(), p.cfg.Relays)
	}

	for _, bad := range []struct {
		field string
		mod   func(*Config)
	}{
		{"relays", func(c *Config) { c.Relays = nil }},
		{"relays[0]", func(c *Config) { c.Relays = []string{"ftp://x"} }},
		{"maxBatchWindows", func(c *Config) { c.MaxBatchWindows = -1 }},
		{"maxBatchBytes", func(c *Config) { c.MaxBatchBytes = 10 }},
		{"logRetention", func(c *Config) { c.LogRetention = Retain(-time.Hour) }},
		{"purgeInterval", func(c *Config) { c.PurgeInterval = time.Millisecond }},
		{"seed.tables[0]", func(c *Config) { c.Seed.Tables = []string{"nodot"} }},
		{"seed.tables[1]", func(c *Config) { c.Seed.Tables = []string{"a.b", "a.b"} }},
		{"seed.chunkRows", func(c *Config) { c.Seed.ChunkRows = -5 }},
		{"seed.rowsPerSecond", func(c *Config) { c.Seed.RowsPerSecond = -1 }},
		{"seed.watermarkTable", func(c *Config) { c.Seed.WatermarkTable = "x" }},
	} {
		c := testConfig("http://r:1")
		bad.mod(&c)
		err := c.Validate()
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), bad.field) {
			t.Errorf("%s: %v", bad.field, err)
		}
	}
}
