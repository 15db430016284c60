package bootstrap

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
	"github.com/databus-go/databus/source"
)

// Seeder defaults, applied to the zero fields of SeedConfig.
const (
	DefaultChunkRows        = 4096
	DefaultProgressInterval = 5 * time.Second
	DefaultChunkTimeout     = time.Minute
	maxChunkRows            = 1_000_000
)

// SeedConfig configures the seeder (see "Seeding" in the package doc).
//
//	seed:
//	  tables: [shop.orders, shop.customers]
//	  watermarkTable: shop._databus_watermark
//	  chunkRows: 4096
//	  rowsPerSecond: 0
//	  progressInterval: 5s
//	  chunkTimeout: 1m
type SeedConfig struct {
	// Tables are the logical sources (db.table) to seed when the store has
	// no seed record of them: each gets a run when Run starts, an
	// unfinished run resumes after its cursor, a finished one is left alone
	// (Producer.Seed seeds a table again).
	Tables []string `yaml:"tables" json:"tables"`
	// WatermarkTable is the logical name (db.table) of the table the marks
	// are written to; the relays must capture it. Default: the table
	// source.WatermarkTableName in the database of Tables[0] (or of the
	// first table passed to Seed).
	WatermarkTable string `yaml:"watermarkTable" json:"watermarkTable"`
	// ChunkRows is the number of rows read per chunk (one short SELECT
	// each). Default 4096; at most 1000000.
	ChunkRows int `yaml:"chunkRows" json:"chunkRows"`
	// RowsPerSecond throttles the reads; 0 (the default) does not.
	RowsPerSecond int `yaml:"rowsPerSecond" json:"rowsPerSecond"`
	// ProgressInterval is how often a running seed logs its progress.
	// Default 5s.
	ProgressInterval time.Duration `yaml:"progressInterval" json:"progressInterval"`
	// ChunkTimeout is how long the seeder waits for a chunk's marks to
	// come through the stream and its rows to be committed before it reads
	// the chunk again with new marks. Default 1m.
	ChunkTimeout time.Duration `yaml:"chunkTimeout" json:"chunkTimeout"`
}

// WithDefaults returns c with every zero field but WatermarkTable set to its
// default (NewProducer derives that one from the tables).
func (c SeedConfig) WithDefaults() SeedConfig {
	if c.ChunkRows == 0 {
		c.ChunkRows = DefaultChunkRows
	}
	if c.ProgressInterval == 0 {
		c.ProgressInterval = DefaultProgressInterval
	}
	if c.ChunkTimeout == 0 {
		c.ChunkTimeout = DefaultChunkTimeout
	}
	return c
}

func (c SeedConfig) validate() error {
	seen := map[string]bool{}
	for i, t := range c.Tables {
		if err := checkTableName(t); err != nil {
			return fmt.Errorf("%w: seed.tables[%d] %q: %v", ErrConfig, i, t, err)
		}
		if seen[t] {
			return fmt.Errorf("%w: seed.tables[%d] %q is listed twice", ErrConfig, i, t)
		}
		seen[t] = true
	}
	if c.WatermarkTable != "" {
		if err := checkTableName(c.WatermarkTable); err != nil {
			return fmt.Errorf("%w: seed.watermarkTable %q: %v", ErrConfig, c.WatermarkTable, err)
		}
		if seen[c.WatermarkTable] {
			return fmt.Errorf("%w: seed.watermarkTable %q is also a table to seed", ErrConfig, c.WatermarkTable)
		}
	}
	switch {
	case c.ChunkRows < 1 || c.ChunkRows > maxChunkRows:
		return fmt.Errorf("%w: seed.chunkRows %d is outside [1, %d]", ErrConfig, c.ChunkRows, maxChunkRows)
	case c.RowsPerSecond < 0:
		return fmt.Errorf("%w: seed.rowsPerSecond %d is negative (0 means unlimited)", ErrConfig, c.RowsPerSecond)
	case c.ProgressInterval < 10*time.Millisecond:
		return fmt.Errorf("%w: seed.progressInterval %v is below 10ms", ErrConfig, c.ProgressInterval)
	case c.ChunkTimeout < 10*time.Millisecond:
		return fmt.Errorf("%w: seed.chunkTimeout %v is below 10ms", ErrConfig, c.ChunkTimeout)
	}
	return nil
}

// checkTableName accepts a logical source name "db.table".
func checkTableName(n string) error {
	db, t, ok := strings.Cut(n, ".")
	if !ok || db == "" || t == "" {
		return errors.New("want a logical source name db.table")
	}
	if strings.ContainsAny(n, ":,\x00") {
		return errors.New("contains ':', ',' or NUL")
	}
	return nil
}

// Errors of Seed.
var (
	// ErrNoSeeding: the Producer was created without a ChunkReader.
	ErrNoSeeding = errors.New("databus: this bootstrap producer has no chunk reader: seeding is not available for its source")
	// ErrNotRunning: Seed needs Run to be running.
	ErrNotRunning = errors.New("databus: bootstrap producer is not running")
	// ErrSeedRunning: the table already has a run queued or in progress.
	ErrSeedRunning = errors.New("databus: a seed of this table is already queued or running")
)

// SeedStatus is the progress of one table's latest seed run, for the
// bootstrap server's /v1/info and the CLI.
type SeedStatus struct {
	Table string `json:"table"`
	Run   string `json:"run"`
	// Rows is the number of rows copied so far: read from the table and
	// committed (a row the stream superseded counts as copied).
	Rows uint64 `json:"rows"`
	Done bool   `json:"done"`
	// Running is true while the seeder works on the run; Queued while it
	// waits for its turn.
	Running bool `json:"running,omitempty"`
	Queued  bool `json:"queued,omitempty"`
	// Estimate is the source's estimate of the table's rows (0: unknown).
	Estimate uint64 `json:"estimate,omitempty"`
	// RowsPerSecond is the copy rate of the run in this process; ETA the
	// time left at that rate (0: unknown).
	RowsPerSecond float64       `json:"rowsPerSecond,omitempty"`
	ETA           time.Duration `json:"eta,omitempty"`
	Started       time.Time     `json:"started"`
	Updated       time.Time     `json:"updated"`
	// Error is the last problem met (the run retries), "" when none.
	Error string `json:"error,omitempty"`
}

// seedRun is one run of one table. Its fields are guarded by Producer.mu.
type seedRun struct {
	table   string
	id      string
	cursor  string // after the last committed chunk
	rows    uint64
	done    bool
	queued  bool
	running bool
	started time.Time
	updated time.Time

	estimate uint64
	err      string
	// t0, rows0: when and at how many rows this process started the run,
	// for its rate.
	t0    time.Time
	rows0 uint64
}

func (r *seedRun) statusLocked(now time.Time) SeedStatus {
	s := SeedStatus{Table: r.table, Run: r.id, Rows: r.rows, Done: r.done, Running: r.running, Queued: r.queued,
		Estimate: r.estimate, Started: r.started, Updated: r.updated, Error: r.err}
	if r.running && !r.t0.IsZero() {
		if el := now.Sub(r.t0).Seconds(); el > 0 && r.rows > r.rows0 {
			s.RowsPerSecond = float64(r.rows-r.rows0) / el
			if r.estimate > r.rows {
				s.ETA = time.Duration(float64(r.estimate-r.rows) / s.RowsPerSecond * float64(time.Second))
			}
		}
	}
	return s
}

// SeedStatus returns the latest run of every table seeded or being seeded
// (as recorded in the store when Run started, and since), by table name.
func (p *Producer) SeedStatus() []SeedStatus {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]SeedStatus, 0, len(p.runs))
	for _, r := range p.runs {
		out = append(out, r.statusLocked(now))
	}
	slices.SortFunc(out, func(a, b SeedStatus) int { return strings.Compare(a.Table, b.Table) })
	return out
}

// Seed starts a new seed run of table (db.table) while the stream goes on,
// for example after the table was restored from a backup, and returns its
// id. It returns once the run's record is committed to the store (so a
// restarted producer resumes it), and the run then waits for the runs
// queued before it: runs execute one at a time. ctx bounds the wait for a
// committer (the stream may be restarting); the commit itself is not
// interrupted.
//
// It fails with ErrNoSeeding without a ChunkReader, ErrNotRunning when Run
// is not running, an error wrapping ErrSeedRunning (with that run's id as
// run) when the table already has a run queued or in progress, an error
// wrapping ErrConfig for a bad table name, or the store's error.
func (p *Producer) Seed(ctx context.Context, table string) (run string, err error) {
	if p.chunks == nil {
		return "", ErrNoSeeding
	}
	if err := checkTableName(table); err != nil {
		return "", fmt.Errorf("%w: seed table %q: %v", ErrConfig, table, err)
	}
	if p.watermarkTable() == "" {
		db, _, _ := strings.Cut(table, ".")
		p.setWatermarkTable(db + "." + source.WatermarkTableName)
	}
	if table == p.watermarkTable() {
		return "", fmt.Errorf("%w: %q is the watermark table", ErrConfig, table)
	}
	if !p.running.Load() {
		return "", ErrNotRunning
	}
	now := time.Now()
	r := &seedRun{table: table, id: newRunID(), queued: true, started: now, updated: now}
	p.mu.Lock()
	if old := p.runs[table]; old != nil && (old.queued || old.running) {
		p.mu.Unlock()
		return old.id, fmt.Errorf("%w: table %s, run %s", ErrSeedRunning, table, old.id)
	}
	prev := p.runs[table]
	p.runs[table] = r // reserved: a concurrent Seed of the table is refused
	p.mu.Unlock()
	undo := func() {
		p.mu.Lock()
		if p.runs[table] == r {
			if prev != nil {
				p.runs[table] = prev
			} else {
				delete(p.runs, table)
			}
		}
		p.mu.Unlock()
	}
	mr := &metaReq{seeds: []store.SeedProgress{{Table: table, Run: r.id, Started: now, Updated: now}}, done: make(chan error, 1)}
	select {
	case p.metaCh <- mr:
	case <-ctx.Done():
		undo()
		return "", ctx.Err()
	}
	if err := <-mr.done; err != nil {
		undo()
		return "", fmt.Errorf("databus: recording seed run of %s: %w", table, err)
	}
	p.mu.Lock()
	p.queue = append(p.queue, r)
	p.mu.Unlock()
	p.m.seedDone.WithLabelValues(table).Set(0)
	p.notifySeeder()
	p.log.Info("databus: seed run queued", "table", table, "run", r.id)
	return r.id, nil
}

func (p *Producer) notifySeeder() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// watermarkTable returns the watermark table's logical name, "" until
// known (no seed configured or asked for yet).
func (p *Producer) watermarkTable() string {
	if s := p.wmTable.Load(); s != nil {
		return *s
	}
	return ""
}

// setWatermarkTable sets the watermark table once; later calls keep the
// first name.
func (p *Producer) setWatermarkTable(name string) { p.wmTable.CompareAndSwap(nil, &name) }

func newRunID() string {
	var b [8]byte
	if _, err := io.ReadFull(rand.Reader, b[:]); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return hex.EncodeToString(b[:])
}

// seedLoop is the seeder goroutine: it queues the configured tables that
// need a run, then executes runs one at a time until ctx ends.
func (p *Producer) seedLoop(ctx context.Context) {
	var recs []store.SeedProgress
	for attempt := 1; ; attempt++ {
		var err error
		if recs, err = p.st.Seeds(ctx); err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		p.log.Error("databus: seeder: reading seed records", "err", err)
		if sleepCtx(ctx, restartBackoff(attempt)) != nil {
			return
		}
	}
	p.mu.Lock()
	for _, rec := range recs {
		r := p.runs[rec.Table]
		switch {
		case r == nil:
			p.runs[rec.Table] = &seedRun{table: rec.Table, id: rec.Run, cursor: rec.Cursor, rows: rec.Rows, done: rec.Done,
				started: rec.Started, updated: rec.Updated}
		case r.id == rec.Run && !r.queued && !r.running:
			// An earlier Run of this Producer: the store is the truth.
			r.cursor, r.rows, r.done, r.updated = rec.Cursor, rec.Rows, rec.Done, rec.Updated
		}
	}
	// Every unfinished run resumes (a configured table's, or one that Seed
	// asked for); runs queued when an earlier Run stopped are still queued.
	var resumed, started []string
	tables := make([]string, 0, len(p.runs))
	for t := range p.runs {
		tables = append(tables, t)
	}
	slices.Sort(tables)
	for _, t := range tables {
		if r := p.runs[t]; !r.done && !r.queued && !r.running {
			r.queued = true
			p.queue = append(p.queue, r)
			resumed = append(resumed, t)
		}
	}
	for _, t := range p.cfg.Seed.Tables {
		if p.runs[t] == nil {
			now := time.Now()
			r := &seedRun{table: t, id: newRunID(), started: now, updated: now, queued: true}
			p.runs[t] = r
			p.queue = append(p.queue, r)
			started = append(started, t)
		}
	}
	for _, r := range p.runs {
		v := 0.0
		if r.done {
			v = 1
		}
		p.m.seedDone.WithLabelValues(r.table).Set(v)
	}
	p.mu.Unlock()
	if len(started)+len(resumed) > 0 {
		p.log.Info("databus: seeder starting", "new", started, "resumed", resumed)
	}

	for {
		p.mu.Lock()
		var r *seedRun
		if len(p.queue) > 0 {
			r, p.queue = p.queue[0], p.queue[1:]
			r.queued, r.running = false, true
		}
		p.mu.Unlock()
		if r == nil {
			select {
			case <-p.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		p.runSeed(ctx, r)
		p.mu.Lock()
		r.running = false
		if !r.done {
			// Stopped by ctx: a later Run resumes it from the store.
			r.queued = false
		}
		p.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
	}
}

// runSeed copies one run's table chunk by chunk until it is done or ctx
// ends.
func (p *Producer) runSeed(ctx context.Context, r *seedRun) {
	cfg := p.cfg.Seed
	if p.watermarkTable() == "" {
		db, _, _ := strings.Cut(r.table, ".")
		p.setWatermarkTable(db + "." + source.WatermarkTableName)
	}
	p.mu.Lock()
	r.t0, r.rows0 = time.Now(), r.rows
	cursor, rows := r.cursor, r.rows
	p.mu.Unlock()
	p.log.Info("databus: seed run starting", "table", r.table, "run", r.id, "cursor", cursor, "rows", rows)

	t, ok := p.waitTable(ctx, r, 0)
	if !ok {
		return
	}
	if est, err := p.chunks.EstimateRows(ctx, t); err == nil {
		p.mu.Lock()
		r.estimate = est
		p.mu.Unlock()
		p.m.seedEstimated.WithLabelValues(r.table).Set(float64(est))
	} else if ctx.Err() == nil {
		p.log.Warn("databus: seed: estimating the table's rows", "table", r.table, "err", err)
	}

	lim := limiter{rate: float64(cfg.RowsPerSecond)}
	lastLog := time.Now()
	failures := 0
	for {
		p.mu.Lock()
		done := r.done
		p.mu.Unlock()
		if done {
			break
		}
		if lim.wait(ctx) != nil {
			return
		}
		n, err := p.seedChunk(ctx, r, t, &lastLog)
		if ctx.Err() != nil {
			return
		}
		switch {
		case err == nil && n >= 0:
			failures = 0
			lim.took(n)
			p.mu.Lock()
			r.err = ""
			p.mu.Unlock()
			continue
		case errors.Is(err, source.ErrSchemaMismatch):
			// A DDL raced the seed: read again with the version the stream
			// announces next.
			p.log.Warn("databus: seed: the table's columns differ from its newest schema version known: waiting for the next one",
				"table", r.table, "version", t.Version, "err", err)
			p.setRunErr(r, err)
			var ok bool
			if t, ok = p.waitTable(ctx, r, t.Version); !ok {
				return
			}
			continue
		case err != nil:
			failures++
			p.setRunErr(r, err)
			p.log.Warn("databus: seed: chunk failed, retrying", "table", r.table, "run", r.id, "err", err)
			if sleepCtx(ctx, restartBackoff(failures)) != nil {
				return
			}
		}
		// The chunk was void (or failed): the store says where the run is.
		p.reloadRun(ctx, r)
	}
	st := p.runStatus(r)
	p.m.seedDone.WithLabelValues(r.table).Set(1)
	p.log.Info("databus: seed run done", "table", r.table, "run", r.id, "rows", st.Rows, "took", time.Since(st.Started).Round(time.Millisecond))
}

func (p *Producer) setRunErr(r *seedRun, err error) {
	p.mu.Lock()
	r.err = err.Error()
	p.mu.Unlock()
}

func (p *Producer) runStatus(r *seedRun) SeedStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	return r.statusLocked(time.Now())
}

// reloadRun resets the run's position from its store record: after a void
// chunk whose batch may nevertheless have been committed (an Apply that
// failed after its commit), the record, not memory, is the truth.
func (p *Producer) reloadRun(ctx context.Context, r *seedRun) {
	recs, err := p.st.Seeds(ctx)
	if err != nil {
		return // memory is right unless that rare case: the next chunk is only applied twice
	}
	for _, rec := range recs {
		if rec.Table == r.table && rec.Run == r.id {
			p.mu.Lock()
			r.cursor, r.rows, r.done, r.updated = rec.Cursor, rec.Rows, rec.Done, rec.Updated
			p.mu.Unlock()
		}
	}
}

// waitTable waits until the stream's client knows a version of r's table
// newer than after, and returns the newest.
func (p *Producer) waitTable(ctx context.Context, r *seedRun, after uint16) (schema.Table, bool) {
	warned := time.Now()
	for {
		if t, ok := p.latestTable(r.table); ok && t.Version > after {
			return t, true
		}
		if time.Since(warned) >= p.cfg.Seed.ProgressInterval {
			warned = time.Now()
			msg := "the relays do not list the table (yet): is it captured?"
			if after > 0 {
				msg = "waiting for the stream to announce the table's next schema version " +
					"(MySQL and MariaDB announce it with the first row written after the DDL)"
			}
			p.log.Warn("databus: seed: "+msg, "table", r.table, "run", r.id)
			p.setRunErr(r, errors.New(msg))
		}
		if sleepCtx(ctx, 50*time.Millisecond) != nil {
			return schema.Table{}, false
		}
	}
}

// latestTable returns the newest version of a table that the current
// session's client knows.
func (p *Producer) latestTable(name string) (schema.Table, bool) {
	p.mu.Lock()
	cl := p.cl
	p.mu.Unlock()
	if cl == nil {
		return schema.Table{}, false
	}
	var (
		best  schema.Table
		found bool
	)
	for _, t := range cl.Schemas() {
		if t.Name == name && (!found || t.Version > best.Version) {
			best, found = t, true
		}
	}
	return best, found
}

// seedChunk makes one attempt at the next chunk of run r with table version
// t (steps 1-4 of "Seeding" in the package doc). It returns the number of
// rows read when the chunk is committed, -1 with a nil error when the chunk
// came to nothing (void, timed out) and must be read again, or the error
// that stopped it.
func (p *Producer) seedChunk(ctx context.Context, r *seedRun, t schema.Table, lastLog *time.Time) (int, error) {
	cfg := p.cfg.Seed
	wmTable := p.watermarkTable()
	p.mu.Lock()
	p.chunkN++
	c := &chunk{key: fmt.Sprintf("%s:%s.%d", r.id, p.nonce, p.chunkN), t: t, state: chunkRegistered, done: make(chan struct{})}
	cursor, base := r.cursor, r.rows
	p.wm.pending[c.key] = c
	p.mu.Unlock()
	abandon := func() {
		p.mu.Lock()
		if c.state == chunkRegistered || c.state == chunkWatching {
			p.wm.voidLocked(c)
		}
		p.mu.Unlock()
	}

	if err := p.chunks.WriteWatermark(ctx, wmTable, r.table, c.key+":L"); err != nil {
		abandon()
		return -1, fmt.Errorf("writing low watermark: %w", err)
	}
	rows, next, err := p.chunks.ReadChunk(ctx, t, cursor, cfg.ChunkRows)
	if err != nil {
		abandon()
		return -1, err
	}
	for i := range rows {
		if e := &rows[i]; e.Kind != event.KindData || e.Op != event.OpInsert || e.Source != t.ID || e.SchemaVersion != t.Version {
			abandon()
			return -1, fmt.Errorf("databus: seed: chunk reader returned a %v %v event of source %d version %d for %s version %d",
				e.Kind, e.Op, e.Source, e.SchemaVersion, t.Name, t.Version)
		}
	}
	now := time.Now()
	p.mu.Lock()
	if c.state != chunkRegistered && c.state != chunkWatching {
		p.mu.Unlock()
		return -1, nil // voided while reading (a restart of the stream, a DDL)
	}
	c.rows, c.hasRows = rows, true
	c.progress = store.SeedProgress{Table: r.table, Run: r.id, Cursor: next, Rows: base + uint64(len(rows)),
		Done: len(rows) < cfg.ChunkRows, Started: r.started, Updated: now}
	p.mu.Unlock()
	if err := p.chunks.WriteWatermark(ctx, wmTable, r.table, c.key+":H"); err != nil {
		abandon()
		return -1, fmt.Errorf("writing high watermark: %w", err)
	}

	timeout := time.NewTimer(cfg.ChunkTimeout)
	defer timeout.Stop()
	tick := time.NewTicker(cfg.ProgressInterval)
	defer tick.Stop()
	for {
		select {
		case <-c.done:
		case <-ctx.Done():
			abandon()
			return -1, ctx.Err()
		case <-tick.C:
			p.logProgress(r, lastLog)
			continue
		case <-timeout.C:
			p.mu.Lock()
			timedOut := c.state == chunkRegistered || c.state == chunkWatching
			if timedOut {
				p.wm.voidLocked(c)
			}
			p.mu.Unlock()
			if !timedOut {
				continue // sealed into a window: its batch is being committed
			}
			p.m.seedRedos.Inc()
			p.log.Warn("databus: seed: a chunk's watermarks did not come through the stream in time; reading it again. "+
				"Is the watermark table captured by the relays?", "table", r.table, "watermarkTable", wmTable, "timeout", cfg.ChunkTimeout)
			return -1, nil
		}
		break
	}
	p.mu.Lock()
	committed := c.state == chunkCommitted
	if committed {
		r.cursor, r.rows, r.done, r.updated = c.progress.Cursor, c.progress.Rows, c.progress.Done, c.progress.Updated
	}
	p.mu.Unlock()
	if !committed {
		return -1, nil
	}
	p.m.seedRows.WithLabelValues(r.table).Add(float64(len(rows)))
	p.m.seedChunks.Inc()
	if time.Since(*lastLog) >= cfg.ProgressInterval {
		p.logProgress(r, lastLog)
	}
	return len(rows), nil
}

func (p *Producer) logProgress(r *seedRun, lastLog *time.Time) {
	*lastLog = time.Now()
	s := p.runStatus(r)
	p.log.Info("databus: seed progress", "table", s.Table, "run", s.Run, "rows", s.Rows, "estimate", s.Estimate,
		"rowsPerSecond", int64(s.RowsPerSecond), "eta", s.ETA.Round(time.Second))
}

// committed is called by the committer after a batch with windows pws was
// applied: the chunks sealed into them are durable, with their progress.
func (p *Producer) committed(pws []*pendingWindow) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pw := range pws {
		for _, c := range pw.sealed {
			if c.state == chunkSealed {
				c.state = chunkCommitted
				delete(p.wm.sealed, c)
				close(c.done)
			}
		}
	}
}

// limiter is a token bucket of rows refilled at rate per second, with a
// burst of one chunk: took(n) spends n rows, wait waits until the bucket is
// no longer in debt.
type limiter struct {
	rate float64 // <= 0: unlimited
	next time.Time
}

func (l *limiter) wait(ctx context.Context) error {
	if l.rate <= 0 {
		return ctx.Err()
	}
	return sleepCtx(ctx, time.Until(l.next))
}

func (l *limiter) took(n int) {
	if l.rate <= 0 {
		return
	}
	if now := time.Now(); l.next.Before(now) {
		l.next = now
	}
	l.next = l.next.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// chunkState is where a chunk is in its life:
//
//	registered ──L──► watching ──H, end of its window──► sealed ──batch applied──► committed
//	     └──────────────┴─────────(any trouble)──────────────┴──────────────► void
type chunkState uint8

const (
	chunkRegistered chunkState = iota + 1
	chunkWatching
	chunkEnding // H met; the rest of H's window is still being read
	chunkSealed
	chunkCommitted
	chunkVoid
)

// chunk is one chunk of a seed run. Its fields are guarded by Producer.mu.
type chunk struct {
	// key is "<run>:<instance>.<n>"; the marks are key+":L" and key+":H".
	key string
	t   schema.Table
	// state only moves forward; done is closed when it becomes committed
	// or void.
	state chunkState
	done  chan struct{}
	// seen holds the encoded keys of t's events after L.
	seen map[string]struct{}
	// rows are the rows read, set (hasRows) before H is written.
	rows     []event.Event
	hasRows  bool
	progress store.SeedProgress
}

// watermarks is the producer's side of the seeding algorithm: a state
// machine fed with the stream's windows, in order, and with chunks by the
// seeder. It does no I/O and reads no clock; Producer.mu guards it.
type watermarks struct {
	// pending holds the chunks in state registered, watching or ending,
	// by key.
	pending map[string]*chunk
	// sealed holds the chunks sealed into a window that is not committed
	// yet.
	sealed map[*chunk]struct{}
}

func (wm *watermarks) voidLocked(c *chunk) {
	if c.state == chunkCommitted || c.state == chunkVoid {
		return
	}
	c.state = chunkVoid
	delete(wm.pending, c.key)
	delete(wm.sealed, c)
	c.seen, c.rows = nil, nil
	close(c.done)
}

// voidAllLocked voids every chunk not committed yet (the stream is about to
// be replayed from the store's head) and returns how many.
func (wm *watermarks) voidAllLocked() int {
	n := 0
	for _, c := range wm.pending {
		wm.voidLocked(c)
		n++
	}
	for c := range wm.sealed {
		wm.voidLocked(c)
		n++
	}
	return n
}

// observation is a data event or schema change of a window, as the
// watermark tracking needs it.
type observation struct {
	data   bool
	index  int // data: the index among the window's data events
	source uint32
	key    []byte
}

// convertLocked converts one window (see convertWindow) and runs the
// watermark algorithm over it: marks[i] is the mark carried by the i-th
// data event (a watermark row). A corrupt window returns an error and
// changes no state.
func (wm *watermarks) convertLocked(scn uint64, frames []byte, marks map[int]string) (*pendingWindow, error) {
	if len(wm.pending) == 0 && len(marks) == 0 {
		pw, _, _, err := convertWindow(scn, frames, nil, nil)
		return pw, err
	}
	// Only what the watermark tracking looks at is observed: marks, and
	// the events and changes of the tables of pending chunks.
	watched := make([]uint32, 0, len(wm.pending))
	for _, c := range wm.pending {
		watched = append(watched, c.t.ID)
	}
	var obs []observation
	pw, eow, eowOff, err := convertWindow(scn, frames,
		func(i int, e *event.Event) {
			if _, ok := marks[i]; ok || slices.Contains(watched, e.Source) {
				obs = append(obs, observation{data: true, index: i, source: e.Source, key: e.Key})
			}
		},
		func(e *event.Event, _ *event.SchemaChange) {
			if slices.Contains(watched, e.Source) {
				obs = append(obs, observation{source: e.Source})
			}
		})
	if err != nil {
		return nil, err
	}
	var ending []*chunk
	for _, o := range obs {
		if o.data {
			if mark, ok := marks[o.index]; ok {
				if c := wm.markLocked(mark); c != nil {
					ending = append(ending, c)
				}
			}
		}
		for _, c := range wm.pending {
			if c.t.ID != o.source || (c.state != chunkWatching && c.state != chunkEnding) {
				continue
			}
			if !o.data {
				// TRUNCATE, DROP or a new version of the table between L
				// and the end of H's window: the chunk's rows are not the
				// table's as of H.
				wm.voidLocked(c)
				continue
			}
			c.seen[string(o.key)] = struct{}{}
		}
	}
	var seal []*chunk
	for _, c := range ending {
		if c.state == chunkEnding {
			seal = append(seal, c)
		}
	}
	if len(seal) == 0 {
		return pw, nil
	}
	if err := appendChunks(pw, eow, frames[:eowOff], seal); err != nil {
		for _, c := range seal {
			wm.voidLocked(c)
		}
		return pw, nil
	}
	for _, c := range seal {
		c.state = chunkSealed
		delete(wm.pending, c.key)
		wm.sealed[c] = struct{}{}
		c.seen, c.rows = nil, nil
		pw.sealed = append(pw.sealed, c)
		pw.seeds = append(pw.seeds, c.progress)
	}
	return pw, nil
}

// markLocked applies one watermark mark and returns the chunk whose H it
// is, if that chunk can end in this window.
func (wm *watermarks) markLocked(mark string) *chunk {
	i := strings.LastIndexByte(mark, ':')
	if i < 0 {
		return nil
	}
	c := wm.pending[mark[:i]]
	if c == nil {
		return nil // not ours, or no longer: ignored
	}
	switch mark[i+1:] {
	case "L":
		if c.state == chunkRegistered {
			c.state = chunkWatching
			c.seen = map[string]struct{}{}
		}
	case "H":
		if c.state != chunkWatching || !c.hasRows {
			// H without its L in this stream (the L was before the
			// session's start): the changes in between were not watched.
			wm.voidLocked(c)
			return nil
		}
		c.state = chunkEnding
		return c
	}
	return nil
}

// appendChunks adds the rows of the sealed chunks that the stream did not
// supersede to the end of window pw, before its end-of-window frame, which
// it encodes again with the new count. head is the window's frames before
// that frame.
func appendChunks(pw *pendingWindow, eow event.Event, head []byte, seal []*chunk) error {
	count, txid, _ := eow.WindowInfo()
	old := len(pw.w.Frames)
	size := len(head)
	var kept []*event.Event
	for _, c := range seal {
		for i := range c.rows {
			e := &c.rows[i]
			if _, ok := c.seen[string(e.Key)]; ok {
				continue
			}
			kept = append(kept, e)
		}
	}
	end := event.EndOfWindow(pw.w.SCN, eow.Timestamp, count+uint32(len(kept)), txid)
	for _, e := range kept {
		size += event.HeaderSize + len(e.Key) + len(e.Payload) + event.TrailerSize
	}
	size += end.Size()
	frames := make([]byte, len(head), size)
	copy(frames, head)
	offs := make([]int, 0, len(kept)+1)
	var err error
	for _, e := range kept {
		ins := event.Event{Kind: event.KindData, Op: event.OpInsert, SCN: pw.w.SCN, Timestamp: eow.Timestamp,
			Source: e.Source, SchemaVersion: e.SchemaVersion, Key: e.Key, Payload: e.Payload}
		offs = append(offs, len(frames))
		if frames, err = event.AppendFrame(frames, &ins); err != nil {
			return err
		}
	}
	offs = append(offs, len(frames))
	if frames, err = event.AppendFrame(frames, &end); err != nil {
		return err
	}
	for i, e := range kept {
		f := frames[offs[i]:offs[i+1]:offs[i+1]]
		pw.w.Rows = append(pw.w.Rows, store.Row{Source: e.Source, Key: f[event.HeaderSize : event.HeaderSize+len(e.Key)], SCN: pw.w.SCN, Op: store.RowUpsert, Frame: f})
	}
	// The seeded frames count twice: in the log and in the snapshot.
	pw.bytes += len(frames) - old + offs[len(offs)-1] - offs[0]
	pw.w.Frames = frames
	pw.events += len(kept)
	return nil
}
