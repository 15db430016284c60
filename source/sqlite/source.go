package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	msqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
	"github.com/databus-go/databus/source"
)

// busyTimeout is how long a statement waits for another connection's lock
// before it fails with SQLITE_BUSY.
const busyTimeout = 5 * time.Second

// batchSize bounds the change-log entries read per query, so that a read
// transaction never stays open across a (possibly blocking) emit and the
// WAL can always be checkpointed.
const batchSize = 4096

// ErrClosed is returned by the methods of a closed Source; ErrNotOpen by
// Run and Release before Open succeeded.
var (
	ErrClosed  = errors.New("databus: sqlite: source closed")
	ErrNotOpen = errors.New("databus: sqlite: source not opened")
)

// ErrPosition is wrapped by the PositionError that Run and Release return
// for a position the change log cannot serve.
var ErrPosition = errors.New("databus: sqlite: position not held by the change log")

// PositionError reports a position that is not a window boundary the
// change log still holds: older than what was released (the changes after
// it are gone, so the caller must bootstrap), newer than anything the log
// ever held (the database was probably replaced), or not the SCN of a
// window.
type PositionError struct {
	SCN      uint64 // the position asked for
	Released uint64 // every entry up to and including this one was released
	Last     uint64 // highest sequence the change log ever assigned
	Reason   string
}

// Error says why the position cannot be served.
func (e *PositionError) Error() string {
	return fmt.Sprintf("%v: SCN %d %s (released up to %d, last sequence %d)", ErrPosition, e.SCN, e.Reason, e.Released, e.Last)
}

// Unwrap returns ErrPosition.
func (e *PositionError) Unwrap() error { return ErrPosition }

// Source captures the committed changes of tables of one SQLite database
// file. It implements source.Source: Open, then Run (one call at a time),
// with Release callable concurrently with Run, and Close after Run has
// returned. Versions may be called at any time after Open.
type Source struct {
	cfg Config
	log *slog.Logger

	// rdb serves reads: polling and catalog checks.
	rdb *sql.DB
	// wdb serves writes: markers, Release and trigger installation. Every
	// transaction on it is BEGIN IMMEDIATE, so it takes SQLite's single
	// write lock up front (waiting up to busyTimeout) instead of failing
	// on upgrade. One connection: Release and the poller queue, not race.
	wdb *sql.DB

	// mu guards the fields below. They are written by Open and by the
	// goroutine running Run (which may read them without mu), and read by
	// Versions.
	mu     sync.Mutex
	closed bool
	tables map[string]*captured // by table name as the catalog spells it
	// cookie is PRAGMA schema_version as of the last check that the
	// triggers match the definitions; a different value means DDL ran.
	cookie int64
}

// captured is the state of one captured table.
type captured struct {
	name     string // as the catalog spells it; the tbl of its row entries
	id       uint32
	current  uint16
	versions map[uint16]*version
}

// New validates cfg and returns a Source that has not touched the database
// yet. A nil log discards messages.
func New(cfg Config, log *slog.Logger) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	return &Source{cfg: cfg, log: log.With("source", "sqlite", "path", cfg.Path)}, nil
}

// dsn builds a modernc.org/sqlite data source name for path. mode=rw makes
// opening a missing file fail instead of creating an empty database.
func dsn(path string, immediate bool) string {
	esc := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)
	d := fmt.Sprintf("file:%s?mode=rw&_pragma=busy_timeout(%d)&_pragma=synchronous(FULL)", esc, busyTimeout.Milliseconds())
	if immediate {
		d += "&_txlock=immediate"
	}
	return d
}

// Open connects to the database, switches it to WAL mode, creates the
// change log and bookkeeping tables if absent, records a new schema version
// for every configured table whose definition changed (or that is new),
// installs or repairs the capture triggers, and returns the current schema
// of every configured table, in configuration order. All of this happens in
// one write transaction: no change to a captured table can slip between
// the definition it was recorded with and its triggers.
//
// Open fails with an error wrapping ErrUnknownTable for a configured table
// that is missing, a view or a virtual table, and with a clear message when
// the file is missing or cannot use WAL.
func (s *Source) Open(ctx context.Context) ([]schema.Table, error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	if _, err := os.Stat(s.cfg.Path); err != nil {
		return nil, fmt.Errorf("databus: sqlite: Path: %w", err)
	}
	if s.rdb == nil {
		rdb, err := sql.Open("sqlite", dsn(s.cfg.Path, false))
		if err != nil {
			return nil, fmt.Errorf("databus: sqlite: open %s: %w", s.cfg.Path, err)
		}
		wdb, err := sql.Open("sqlite", dsn(s.cfg.Path, true))
		if err != nil {
			rdb.Close()
			return nil, fmt.Errorf("databus: sqlite: open %s: %w", s.cfg.Path, err)
		}
		rdb.SetMaxOpenConns(2)
		wdb.SetMaxOpenConns(1)
		s.rdb, s.wdb = rdb, wdb
	}
	var mode string
	if err := s.wdb.QueryRowContext(ctx, `PRAGMA journal_mode=WAL`).Scan(&mode); err != nil {
		return nil, fmt.Errorf("databus: sqlite: open %s: set journal_mode=WAL: %w", s.cfg.Path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		return nil, fmt.Errorf("databus: sqlite: %s stays in journal_mode=%s; the source needs journal_mode=WAL (an on-disk database file that no other process holds in another mode)", s.cfg.Path, mode)
	}
	if err := s.install(ctx); err != nil {
		return nil, err
	}
	out := make([]schema.Table, 0, len(s.cfg.Tables))
	for _, name := range s.cfg.Tables {
		c := s.lookup(name)
		t := c.versions[c.current].table
		out = append(out, t)
		s.log.Info("capturing table", "table", t.Name, "id", t.ID, "version", t.Version, "key", t.Key)
	}
	return out, nil
}

// lookup returns the captured table a configured name resolves to.
func (s *Source) lookup(name string) *captured {
	if c := s.tables[name]; c != nil {
		return c
	}
	for _, c := range s.tables {
		if strings.EqualFold(c.name, name) {
			return c
		}
	}
	return nil
}

// install runs syncTable for every configured table in one write
// transaction, then loads every recorded version of them.
func (s *Source) install(ctx context.Context) error {
	tx, err := s.wdb.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("databus: sqlite: begin install transaction: %w", err)
	}
	defer tx.Rollback()
	for _, q := range setupSQL {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("databus: sqlite: create change log: %w", err)
		}
	}
	format, err := readState(ctx, tx, stateFormat)
	if err != nil {
		return err
	}
	switch {
	case format == 0:
		if err := writeState(ctx, tx, stateFormat, formatVersion); err != nil {
			return err
		}
	case format > formatVersion:
		return fmt.Errorf("databus: sqlite: %s holds change-log format %d; this databus reads format %d and older: upgrade it", s.cfg.Path, format, formatVersion)
	}
	now := time.Now().UnixNano()
	tables := map[string]*captured{}
	for _, name := range s.cfg.Tables {
		l, id, ver, err := syncTable(ctx, tx, name, now)
		if err != nil {
			return err
		}
		if tables[l.name] != nil {
			return fmt.Errorf("%w: Tables lists table %q twice", ErrConfig, l.name)
		}
		tables[l.name] = &captured{name: l.name, id: id, current: ver}
	}
	var cookie int64
	if err := tx.QueryRowContext(ctx, `PRAGMA schema_version`).Scan(&cookie); err != nil {
		return fmt.Errorf("databus: sqlite: read schema_version: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("databus: sqlite: commit install transaction: %w", err)
	}
	for _, c := range tables {
		if c.versions, err = loadVersions(ctx, s.rdb, c.id); err != nil {
			return err
		}
		if c.versions[c.current] == nil {
			return fmt.Errorf("databus: sqlite: version %d of %s is not recorded", c.current, c.name)
		}
	}
	s.mu.Lock()
	for _, c := range tables {
		if old := s.tables[c.name]; old != nil && old.current != c.current {
			s.log.Info("table schema changed", "table", "main."+c.name, "id", c.id, "version", c.current)
		}
	}
	s.tables, s.cookie = tables, cookie
	s.mu.Unlock()
	return nil
}

// refreshSchema reinstalls triggers (recording new versions) when DDL ran
// since the last check and changed a captured table or its triggers.
func (s *Source) refreshSchema(ctx context.Context) error {
	var cookie int64
	if err := s.rdb.QueryRowContext(ctx, `PRAGMA schema_version`).Scan(&cookie); err != nil {
		return fmt.Errorf("databus: sqlite: read schema_version: %w", err)
	}
	if cookie == s.cookie {
		return nil
	}
	// DDL ran somewhere. Most DDL does not concern the captured tables:
	// check in a read transaction before taking the write lock.
	same, cookie, err := s.upToDate(ctx)
	if err != nil {
		return err
	}
	if same {
		s.mu.Lock()
		s.cookie = cookie
		s.mu.Unlock()
		return nil
	}
	return s.install(ctx)
}

// upToDate reports whether every captured table still has its current
// version's definition and triggers, and the schema_version it saw.
func (s *Source) upToDate(ctx context.Context) (bool, int64, error) {
	tx, err := s.rdb.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return false, 0, fmt.Errorf("databus: sqlite: begin read: %w", err)
	}
	defer tx.Rollback()
	var cookie int64
	if err := tx.QueryRowContext(ctx, `PRAGMA schema_version`).Scan(&cookie); err != nil {
		return false, 0, fmt.Errorf("databus: sqlite: read schema_version: %w", err)
	}
	for _, c := range s.tables {
		l, err := inspect(ctx, tx, c.name)
		if err != nil {
			return false, 0, err
		}
		if !sameDefinition(&l.table, &c.versions[c.current].table) {
			return false, cookie, nil
		}
		for _, tr := range triggers(l, c.current) {
			var have string
			err := tx.QueryRowContext(ctx, `SELECT sql FROM sqlite_schema WHERE type = 'trigger' AND name = ?`, tr.name).Scan(&have)
			if errors.Is(err, sql.ErrNoRows) || (err == nil && have != tr.sql) {
				return false, cookie, nil
			}
			if err != nil {
				return false, 0, fmt.Errorf("databus: sqlite: read trigger %s: %w", tr.name, err)
			}
		}
	}
	return true, cookie, nil
}

// Versions returns every recorded schema version of every captured table,
// by id then version, oldest first. The relay needs the older versions to
// serve schemas of entries still in the change log after a restart (Open
// returns only the current ones). It returns nil before Open.
func (s *Source) Versions() []schema.Table {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []schema.Table
	for _, c := range s.tables {
		for _, v := range c.versions {
			out = append(out, v.table)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ID != out[j].ID {
			return out[i].ID < out[j].ID
		}
		return out[i].Version < out[j].Version
	})
	return out
}

func (s *Source) ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return ErrClosed
	case s.tables == nil:
		return ErrNotOpen
	}
	return nil
}

// Run emits, in SCN order, every window after from that the change log
// holds, then keeps polling every PollInterval and emits each new window as
// it closes. A window is every change-log entry between two markers: the
// whole transactions that committed between two polls, never a part of
// one. Running again from the same position yields the same windows with
// the same SCNs and byte-identical events, because the boundaries are
// markers stored in the log itself.
//
// from must be the zero Position (start after everything released), the
// position of a window still in the log, or the last released position;
// any other yields a *PositionError. Run returns ctx's error when ctx is
// done, emit's error when emit fails, a *ValueError when a value cannot be
// captured without loss, and an error wrapping ErrUnknownTable when a
// captured table is dropped or renamed.
func (s *Source) Run(ctx context.Context, from source.Position, emit func(context.Context, *source.Window) error) error {
	if err := s.ready(); err != nil {
		return err
	}
	last, err := s.startAt(ctx, from)
	if err != nil {
		return err
	}
	s.log.Info("capture running", "from", last)
	r := &reader{s: s}
	lastEmit := time.Now()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.refreshSchema(ctx); err != nil {
			return s.pollError(ctx, err)
		}
		due := s.cfg.HeartbeatInterval > 0 && time.Since(lastEmit) >= s.cfg.HeartbeatInterval
		end, wrote, err := s.closeWindow(ctx, last, due)
		switch {
		case err != nil && isBusy(err) && ctx.Err() == nil:
			// A writer held the lock for longer than busyTimeout: try
			// again at the next poll.
			s.log.Warn("change log busy; will retry", "err", err)
		case err != nil:
			return s.pollError(ctx, err)
		case end > last:
			n, err := r.drain(ctx, last, end, emit)
			if err != nil {
				return s.pollError(ctx, err)
			}
			last = end
			if n > 0 {
				lastEmit = time.Now()
			}
			if !wrote {
				continue // markers were already in the log: catching up
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(s.cfg.PollInterval):
		}
	}
}

// pollError prefers ctx's error to the one its cancellation caused.
func (s *Source) pollError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

func isBusy(err error) bool {
	var se *msqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	c := se.Code() & 0xff
	return c == sqlite3.SQLITE_BUSY || c == sqlite3.SQLITE_LOCKED
}

// startAt checks from against the log and returns the sequence after which
// Run starts.
func (s *Source) startAt(ctx context.Context, from source.Position) (uint64, error) {
	tx, err := s.rdb.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return 0, fmt.Errorf("databus: sqlite: begin read: %w", err)
	}
	defer tx.Rollback()
	released, err := readState(ctx, tx, stateReleased)
	if err != nil {
		return 0, err
	}
	var lastSeq int64
	err = tx.QueryRowContext(ctx, `SELECT seq FROM sqlite_sequence WHERE name = '_databus_changelog'`).Scan(&lastSeq)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("databus: sqlite: read change-log sequence: %w", err)
	}
	pe := &PositionError{SCN: from.SCN, Released: released, Last: uint64(lastSeq)}
	switch {
	case from.SCN == 0 || from.SCN == released:
		return released, nil
	case from.SCN < released:
		pe.Reason = "was released: the changes after it are gone"
		return 0, pe
	case from.SCN > uint64(lastSeq):
		pe.Reason = "is beyond the end of the change log (was the database file replaced?)"
		return 0, pe
	}
	var k int
	err = tx.QueryRowContext(ctx, `SELECT kind FROM _databus_changelog WHERE seq = ?`, int64(from.SCN)).Scan(&k)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && k != kindMarker) {
		pe.Reason = "is not the SCN of a window"
		return 0, pe
	}
	if err != nil {
		return 0, fmt.Errorf("databus: sqlite: read change log: %w", err)
	}
	return from.SCN, nil
}

// closeWindow returns the sequence of the newest marker after last,
// writing one when entries after the newest marker await one or when a
// heartbeat is due. Once a marker has committed, every entry below it is
// final: SQLite serialises writers and AUTOINCREMENT never reuses a
// sequence, so any later transaction gets a higher one. wrote reports
// whether this call wrote the marker.
func (s *Source) closeWindow(ctx context.Context, last uint64, heartbeat bool) (end uint64, wrote bool, err error) {
	var seq int64
	var k int
	err = s.rdb.QueryRowContext(ctx, `SELECT seq, kind FROM _databus_changelog ORDER BY seq DESC LIMIT 1`).Scan(&seq, &k)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return last, false, fmt.Errorf("databus: sqlite: poll change log: %w", err)
	}
	switch {
	case uint64(seq) > last && k == kindMarker:
		return uint64(seq), false, nil
	case uint64(seq) <= last && !heartbeat:
		return last, false, nil
	}
	m, err := s.writeMarker(ctx)
	if err != nil {
		return last, false, err
	}
	return m, true, nil
}

func (s *Source) writeMarker(ctx context.Context) (uint64, error) {
	conn, err := s.wdb.Conn(ctx)
	if err != nil {
		return 0, fmt.Errorf("databus: sqlite: begin marker: %w", err)
	}
	defer conn.Close()
	tx, err := beginEager(ctx, conn)
	if err != nil {
		return 0, fmt.Errorf("databus: sqlite: begin marker: %w", err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `INSERT INTO _databus_changelog(kind, ts) VALUES(?, ?)`, kindMarker, time.Now().UnixNano())
	if err != nil {
		return 0, fmt.Errorf("databus: sqlite: write marker: %w", err)
	}
	seq, err := res.LastInsertId()
	if err != nil {
		return 0, err
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("databus: sqlite: commit marker: %w", err)
	}
	return uint64(seq), nil
}

// beginEager starts a BEGIN IMMEDIATE transaction on conn, retrying every
// few tens of microseconds for up to busyTimeout. SQLite's own busy handler
// sleeps 1 to 100 ms between tries, so against an application that commits
// transactions back to back it keeps losing the write lock, and the window
// it should close grows with every transaction it misses. Short retries
// land in the gaps between the application's transactions.
func beginEager(ctx context.Context, conn *sql.Conn) (*sql.Tx, error) {
	if _, err := conn.ExecContext(ctx, "PRAGMA busy_timeout = 0"); err != nil {
		return nil, err
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), fmt.Sprintf("PRAGMA busy_timeout = %d", busyTimeout.Milliseconds()))
	deadline := time.Now().Add(busyTimeout)
	wait := 20 * time.Microsecond
	for {
		tx, err := conn.BeginTx(ctx, nil)
		if err == nil || !isBusy(err) || time.Now().After(deadline) {
			return tx, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 500*time.Microsecond)
	}
}

// Release deletes the change-log entries up to and including pos.SCN,
// never above it, and records pos as released so that Run refuses older
// positions with a *PositionError. Releasing a position at or below the
// last released one is a no-op. pos must be the position of a window the
// log holds. Release is safe to call concurrently with Run.
func (s *Source) Release(ctx context.Context, pos source.Position) error {
	if err := s.ready(); err != nil {
		return err
	}
	tx, err := s.wdb.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("databus: sqlite: begin release: %w", err)
	}
	defer tx.Rollback()
	released, err := readState(ctx, tx, stateReleased)
	if err != nil {
		return err
	}
	if pos.SCN <= released {
		return nil
	}
	var k int
	err = tx.QueryRowContext(ctx, `SELECT kind FROM _databus_changelog WHERE seq = ?`, int64(pos.SCN)).Scan(&k)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && k != kindMarker) {
		return &PositionError{SCN: pos.SCN, Released: released, Reason: "is not the SCN of a window in the change log; nothing released"}
	}
	if err != nil {
		return fmt.Errorf("databus: sqlite: release: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM _databus_changelog WHERE seq <= ?`, int64(pos.SCN)); err != nil {
		return fmt.Errorf("databus: sqlite: release: %w", err)
	}
	if err := writeState(ctx, tx, stateReleased, pos.SCN); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("databus: sqlite: commit release: %w", err)
	}
	return nil
}

// Close closes the database connections. The triggers stay installed and
// keep logging changes, so a later Run loses nothing. Close must not be
// called while Run is running; calling it twice is harmless.
func (s *Source) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	var errs []error
	if s.rdb != nil {
		errs = append(errs, s.rdb.Close())
	}
	if s.wdb != nil {
		errs = append(errs, s.wdb.Close())
	}
	return errors.Join(errs...)
}

// entry is one row of _databus_changelog.
type entry struct {
	seq      uint64
	kind     int
	tbl      string
	op       int
	ver      int64
	ts       int64
	new, old string
}

// reader turns change-log entries into windows. It belongs to one Run.
type reader struct {
	s       *Source
	batch   []entry
	newDec  imageDecoder
	oldDec  imageDecoder
	conv    []value
	avroBuf []byte
	keyBuf  []byte
	oldAvro []byte
	oldKey  []byte
	arena   []byte

	// The window being built: events of the entries after the last
	// marker, their SCN still unset.
	events []event.Event
}

// drain emits the windows closed by the markers in (last, end]. The entry
// at end is a marker, so no window is left open. It returns the number of
// windows emitted.
func (r *reader) drain(ctx context.Context, last, end uint64, emit func(context.Context, *source.Window) error) (int, error) {
	n := 0
	r.events = nil
	for cur := last; cur < end; {
		if err := r.read(ctx, cur, end); err != nil {
			return n, err
		}
		if len(r.batch) == 0 {
			return n, fmt.Errorf("databus: sqlite: change-log entries %d..%d vanished (released by another process?)", cur+1, end)
		}
		for i := range r.batch {
			e := &r.batch[i]
			cur = e.seq
			switch e.kind {
			case kindMarker:
				w := &source.Window{SCN: e.seq, Timestamp: e.ts, Events: r.events, Position: source.Position{SCN: e.seq}}
				for j := range w.Events {
					w.Events[j].SCN = e.seq
				}
				r.events = nil
				if err := emit(ctx, w); err != nil {
					return n, err
				}
				n++
			case kindRow:
				if err := r.row(ctx, e); err != nil {
					return n, err
				}
			case kindSchema:
				if err := r.schemaChange(ctx, e); err != nil {
					return n, err
				}
			default:
				return n, fmt.Errorf("databus: sqlite: change-log entry %d has unknown kind %d", e.seq, e.kind)
			}
		}
	}
	if len(r.events) > 0 {
		return n, fmt.Errorf("databus: sqlite: change-log entry %d should be a marker", end)
	}
	return n, nil
}

func (r *reader) read(ctx context.Context, cur, end uint64) error {
	rows, err := r.s.rdb.QueryContext(ctx, `SELECT seq, kind, COALESCE(tbl, ''), COALESCE(op, 0), COALESCE(ver, 0), COALESCE(ts, 0), COALESCE(new, ''), COALESCE(old, '')
		FROM _databus_changelog WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?`, int64(cur), int64(end), batchSize)
	if err != nil {
		return fmt.Errorf("databus: sqlite: read change log: %w", err)
	}
	defer rows.Close()
	r.batch = r.batch[:0]
	for rows.Next() {
		var e entry
		if err := rows.Scan(&e.seq, &e.kind, &e.tbl, &e.op, &e.ver, &e.ts, &e.new, &e.old); err != nil {
			return fmt.Errorf("databus: sqlite: read change log: %w", err)
		}
		r.batch = append(r.batch, e)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("databus: sqlite: read change log: %w", err)
	}
	return nil
}

// version returns the version an entry was written with, or nil for a
// table that is not captured (anymore): such entries are skipped.
func (r *reader) version(ctx context.Context, e *entry) (*captured, *version, error) {
	c := r.s.tables[e.tbl]
	if c == nil {
		return nil, nil, nil
	}
	if e.ver <= 0 || e.ver >= 1<<16 {
		return nil, nil, fmt.Errorf("databus: sqlite: change-log entry %d of %s has schema version %d", e.seq, e.tbl, e.ver)
	}
	if v := c.versions[uint16(e.ver)]; v != nil {
		return c, v, nil
	}
	// Recorded by another process since we loaded the versions.
	vs, err := loadVersions(ctx, r.s.rdb, c.id)
	if err != nil {
		return nil, nil, err
	}
	v := vs[uint16(e.ver)]
	if v == nil {
		return nil, nil, fmt.Errorf("databus: sqlite: change-log entry %d of %s has schema version %d, which is not recorded", e.seq, e.tbl, e.ver)
	}
	r.s.mu.Lock()
	c.versions = vs
	r.s.mu.Unlock()
	return c, v, nil
}

func (r *reader) schemaChange(ctx context.Context, e *entry) error {
	_, v, err := r.version(ctx, e)
	if err != nil || v == nil {
		return err
	}
	ev, err := event.NewSchemaChange(0, e.ts, v.change)
	if err != nil {
		return err
	}
	r.events = append(r.events, ev)
	return nil
}

// row appends the events of a row entry: one, or a delete and an insert
// for an update that changed the key.
func (r *reader) row(ctx context.Context, e *entry) error {
	_, v, err := r.version(ctx, e)
	if err != nil || v == nil {
		return err
	}
	var hasNew, hasOld bool
	switch e.op {
	case opInsert:
		hasNew = true
	case opUpdate:
		hasNew, hasOld = true, true
	case opDelete:
		hasOld = true
	default:
		return fmt.Errorf("databus: sqlite: change-log entry %d of %s has unknown op %d", e.seq, e.tbl, e.op)
	}
	if hasNew {
		if r.avroBuf, r.keyBuf, err = r.encode(e, v, &r.newDec, e.new, r.avroBuf[:0], r.keyBuf[:0]); err != nil {
			return err
		}
	}
	if hasOld {
		if r.oldAvro, r.oldKey, err = r.encode(e, v, &r.oldDec, e.old, r.oldAvro[:0], r.oldKey[:0]); err != nil {
			return err
		}
	}
	base := event.Event{Kind: event.KindData, Timestamp: e.ts, Source: v.table.ID, SchemaVersion: v.table.Version}
	switch {
	case e.op == opInsert:
		ev := base
		ev.Op, ev.Key, ev.Payload = event.OpInsert, r.copy(r.keyBuf), r.copy(r.avroBuf)
		r.events = append(r.events, ev)
	case e.op == opDelete:
		ev := base
		ev.Op, ev.Key, ev.Before, ev.HasBefore = event.OpDelete, r.copy(r.oldKey), r.copy(r.oldAvro), true
		r.events = append(r.events, ev)
	case bytes.Equal(r.keyBuf, r.oldKey):
		ev := base
		ev.Op, ev.Key, ev.Payload, ev.Before, ev.HasBefore = event.OpUpdate, r.copy(r.keyBuf), r.copy(r.avroBuf), r.copy(r.oldAvro), true
		r.events = append(r.events, ev)
	default:
		// The key changed: consumers that materialise by key must drop
		// the old row and add the new one.
		del, ins := base, base
		del.Op, del.Key, del.Before, del.HasBefore = event.OpDelete, r.copy(r.oldKey), r.copy(r.oldAvro), true
		ins.Op, ins.Key, ins.Payload = event.OpInsert, r.copy(r.keyBuf), r.copy(r.avroBuf)
		r.events = append(r.events, del, ins)
	}
	return nil
}

func (r *reader) encode(e *entry, v *version, d *imageDecoder, img string, avro, key []byte) ([]byte, []byte, error) {
	vals, err := d.parse(img)
	if err != nil {
		return avro, key, fmt.Errorf("databus: sqlite: change-log entry %d of %s: %w", e.seq, e.tbl, err)
	}
	avro, key, bad, badVal, err := v.encodeRow(vals, avro, key, &r.conv)
	if err != nil {
		return avro, key, fmt.Errorf("databus: sqlite: change-log entry %d of %s: %w", e.seq, e.tbl, err)
	}
	if bad >= 0 {
		return avro, key, &ValueError{
			Table:  v.table.Name,
			Column: v.table.Columns[bad].Name,
			Seq:    e.seq,
			Class:  badVal.className(),
			Avro:   v.kinds[bad].String(),
			Detail: describe(badVal),
		}
	}
	return avro, key, nil
}

// copy moves b into the arena that backs the events' byte slices: a few
// large allocations instead of three per event. The returned slice's
// capacity ends with it, so appending to it never clobbers a neighbour.
func (r *reader) copy(b []byte) []byte {
	const chunk = 64 << 10
	if cap(r.arena)-len(r.arena) < len(b) {
		r.arena = make([]byte, 0, max(chunk, len(b)))
	}
	n := len(r.arena)
	r.arena = append(r.arena, b...)
	return r.arena[n:len(r.arena):len(r.arena)]
}
