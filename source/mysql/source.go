package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	driver "github.com/go-sql-driver/mysql"

	"github.com/databus-go/databus/schema"
	"github.com/databus-go/databus/source"
)

// Source captures a MariaDB or MySQL server's binlog. It implements
// source.Source; see the package doc for what it guarantees.
type Source struct {
	cfg Config
	log *slog.Logger
	now func() time.Time

	// mu guards the fields below it; Run reads them once at its start.
	mu       sync.Mutex
	db       *sql.DB
	flavor   string
	colls    collationSet
	store    *schemaStore
	filter   *filter
	released source.Position // the newest position the relay released
	// openEnd is the end of the binlog when Open ran: where a run from the
	// zero Position starts with StartAtEnd, so that nothing committed after
	// Open returned (and the relay said it was ready) is skipped.
	openEnd *posData
}

// Option configures a Source.
type Option func(*Source)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(s *Source) { s.log = l } }

// New returns a Source for cfg, which it validates. It does not connect.
func New(cfg Config, opts ...Option) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Source{cfg: cfg.withDefaults(), log: slog.Default(), now: time.Now}
	for _, o := range opts {
		o(s)
	}
	s.filter = newFilter(&s.cfg)
	return s, nil
}

var _ source.Source = (*Source)(nil)

func (s *Source) driverConfig() *driver.Config { return driverConfig(&s.cfg, s.log) }

// driverConfig is the database/sql configuration of cfg's server: UTC
// session time zone (TIMESTAMP text in UTC, as the capture renders it), no
// time parsing.
func driverConfig(cfg *Config, log *slog.Logger) *driver.Config {
	c := driver.NewConfig()
	c.User = cfg.User
	c.Passwd = string(cfg.Password)
	c.Net = "tcp"
	c.Addr = net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port))
	c.ParseTime = false
	c.Timeout = 10 * time.Second
	c.Params = map[string]string{"time_zone": "'+00:00'"}
	c.Logger = driverLogger{log}
	return c
}

// driverLogger sends the driver's complaints (broken connections, which
// the pool retries) to the debug log instead of stderr.
type driverLogger struct{ log *slog.Logger }

func (l driverLogger) Print(v ...any) {
	l.log.Debug("mysql driver", "msg", strings.TrimSpace(fmt.Sprint(v...)))
}

// Open connects, checks the server's binlog settings and returns the
// current definition of every captured table, read from information_schema
// (the log decides the definitions events are decoded with). It may be
// called again after a failure.
func (s *Source) Open(ctx context.Context) ([]schema.Table, error) {
	conn, err := driver.NewConnector(s.driverConfig())
	if err != nil {
		return nil, fmt.Errorf("databus: mysql: %w", err)
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(2)
	db.SetConnMaxIdleTime(time.Minute)
	tables, flavor, colls, store, err := s.open(ctx, db)
	if err != nil {
		db.Close()
		return nil, err
	}
	var end *posData
	if s.cfg.StartAt != StartAtOldest {
		p, err := masterStatus(ctx, db)
		if err != nil {
			db.Close()
			return nil, err
		}
		end = &p
	}
	s.mu.Lock()
	old := s.db
	s.db, s.flavor, s.colls, s.store, s.openEnd = db, flavor, colls, store, end
	s.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return tables, nil
}

func (s *Source) open(ctx context.Context, db *sql.DB) ([]schema.Table, string, collationSet, *schemaStore, error) {
	var version string
	var serverID uint32
	if err := db.QueryRowContext(ctx, "SELECT VERSION(), @@GLOBAL.server_id").Scan(&version, &serverID); err != nil {
		return nil, "", nil, nil, fmt.Errorf("databus: mysql: connect to %s as %s: %w", s.cfg.addr(), s.cfg.User, err)
	}
	flavor := s.cfg.Flavor
	if flavor == FlavorAuto {
		flavor = FlavorMySQL
		if strings.Contains(strings.ToLower(version), "mariadb") {
			flavor = FlavorMariaDB
		}
	}
	if err := s.checkSettings(ctx, db, flavor, version, serverID); err != nil {
		return nil, "", nil, nil, err
	}
	colls, charsets, err := readCollations(ctx, db)
	if err != nil {
		return nil, "", nil, nil, err
	}
	s.mu.Lock()
	store := s.store
	s.mu.Unlock()
	if store == nil {
		if store, err = openSchemaStore(s.cfg.StateDir); err != nil {
			return nil, "", nil, nil, err
		}
	}
	defs, err := readCatalog(ctx, db, s.filter, charsets)
	if err != nil {
		return nil, "", nil, nil, err
	}
	tables := make([]schema.Table, 0, len(defs))
	for _, d := range defs {
		t, err := store.resolve(d.schemaTable())
		if err != nil {
			return nil, "", nil, nil, err
		}
		tables = append(tables, t)
	}
	sort.Slice(tables, func(i, j int) bool { return tables[i].ID < tables[j].ID })
	if s.cfg.HeartbeatTable != "" {
		db1, t1, _ := strings.Cut(s.cfg.HeartbeatTable, ".")
		q := "CREATE TABLE IF NOT EXISTS " + quoteIdent(db1) + "." + quoteIdent(t1) +
			" (id INT UNSIGNED NOT NULL PRIMARY KEY, ts DATETIME(6) NOT NULL)"
		if _, err := db.ExecContext(ctx, q); err != nil {
			return nil, "", nil, nil, fmt.Errorf("databus: mysql: create heartbeat table %s: %w", s.cfg.HeartbeatTable, err)
		}
	}
	s.log.Info("mysql source open", "addr", s.cfg.addr(), "flavor", flavor, "version", version, "tables", len(tables))
	return tables, flavor, colls, store, nil
}

// checkSettings refuses a server whose binlog cannot be captured
// faithfully, naming the setting to change.
func (s *Source) checkSettings(ctx context.Context, db *sql.DB, flavor, version string, serverID uint32) error {
	vars := map[string]string{}
	rows, err := db.QueryContext(ctx, "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format', 'binlog_row_image', 'binlog_row_metadata')")
	if err != nil {
		return fmt.Errorf("databus: mysql: read server settings: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return err
		}
		vars[strings.ToLower(k)] = strings.ToUpper(v)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	fl := flavorName(flavor)
	if v := vars["log_bin"]; v != "ON" && v != "1" {
		return &SettingError{Flavor: fl, Setting: "log_bin", Value: orUnset(v), Want: "ON", How: "start the server with --log-bin; it cannot change at runtime",
			Why: "so the server writes the binary log the adapter reads"}
	}
	if v := vars["binlog_format"]; v != "ROW" {
		return &SettingError{Flavor: fl, Setting: "binlog_format", Value: orUnset(v), Want: "ROW",
			Why: "so the binlog carries row images (sessions already open keep their format until they reconnect)"}
	}
	if v := vars["binlog_row_image"]; v != "FULL" {
		return &SettingError{Flavor: fl, Setting: "binlog_row_image", Value: orUnset(v), Want: "FULL",
			Why: "so every row event carries whole before and after images"}
	}
	if v, ok := vars["binlog_row_metadata"]; !ok {
		return &SettingError{Flavor: fl, Setting: "binlog_row_metadata", Value: "not supported by " + version, Want: "FULL",
			How: "it needs MariaDB 10.5 or MySQL 8.0.1 or later", Why: "so the binlog carries column names"}
	} else if v != "FULL" {
		return &SettingError{Flavor: fl, Setting: "binlog_row_metadata", Value: v, Want: "FULL",
			Why: "so the binlog carries column names"}
	}
	if serverID == s.cfg.ServerID {
		return fmt.Errorf("%w: ServerID %d is the server's own server_id; choose another", ErrConfig, s.cfg.ServerID)
	}
	return nil
}

func orUnset(v string) string {
	if v == "" {
		return "unset"
	}
	return v
}

func quoteIdent(s string) string { return "`" + strings.ReplaceAll(s, "`", "``") + "`" }

// readCollations maps collation ids (as table maps carry them) to character
// sets, and character set names to their longest character in bytes.
// MariaDB 10.10+ lists the ids of its UCA 14 collations (utf8mb4_uca1400_*)
// only in COLLATION_CHARACTER_SET_APPLICABILITY.
func readCollations(ctx context.Context, db *sql.DB) (collationSet, map[string]int, error) {
	charsets := map[string]int{}
	if err := queryRows(ctx, db, "SELECT CHARACTER_SET_NAME, MAXLEN FROM information_schema.CHARACTER_SETS", func(rows *sql.Rows) error {
		var name string
		var maxLen int
		if err := rows.Scan(&name, &maxLen); err != nil {
			return err
		}
		charsets[name] = maxLen
		return nil
	}); err != nil {
		return nil, nil, fmt.Errorf("databus: mysql: read character sets: %w", err)
	}
	colls := collationSet{}
	add := func(rows *sql.Rows) error {
		var id uint64
		var name string
		if err := rows.Scan(&id, &name); err != nil {
			return err
		}
		colls[id] = charsetByName(name, charsets[name])
		return nil
	}
	if err := queryRows(ctx, db, "SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATIONS WHERE ID IS NOT NULL", add); err != nil {
		return nil, nil, fmt.Errorf("databus: mysql: read collations: %w", err)
	}
	// Only MariaDB 10.10+ has the ID column here; elsewhere the query fails
	// and COLLATIONS had them all.
	_ = queryRows(ctx, db, "SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATION_CHARACTER_SET_APPLICABILITY WHERE ID IS NOT NULL", add)
	return colls, charsets, nil
}

// queryRows runs q and calls fn for each row.
func queryRows(ctx context.Context, db *sql.DB, q string, fn func(*sql.Rows) error) error {
	rows, err := db.QueryContext(ctx, q)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := fn(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// readCatalog reads the definition of every captured table.
func readCatalog(ctx context.Context, db *sql.DB, f *filter, charsets map[string]int) ([]*tableDef, error) {
	return readDefs(ctx, db, charsets, f.match, "", "")
}

// readTableDef reads the definition of table dbName.table from the catalog,
// or nil when the table does not exist.
func readTableDef(ctx context.Context, db *sql.DB, charsets map[string]int, dbName, table string) (*tableDef, error) {
	defs, err := readDefs(ctx, db, charsets, func(string, string) bool { return true }, dbName, table)
	if err != nil || len(defs) == 0 {
		return nil, err
	}
	return defs[0], nil
}

// readDefs reads the definitions of the tables keep accepts, in the
// catalog's order; with onlyTable set, of onlyDB.onlyTable alone.
func readDefs(ctx context.Context, db *sql.DB, charsets map[string]int, keep func(db, table string) bool, onlyDB, onlyTable string) ([]*tableDef, error) {
	where := "TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')"
	var args []any
	if onlyTable != "" {
		where += " AND TABLE_SCHEMA = ? AND TABLE_NAME = ?"
		args = []any{onlyDB, onlyTable}
	}
	defs := map[string]*tableDef{}
	var order []string
	rows, err := db.QueryContext(ctx, "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE' AND "+where, args...)
	if err != nil {
		return nil, fmt.Errorf("databus: mysql: read catalog: %w", err)
	}
	for rows.Next() {
		var d tableDef
		if err := rows.Scan(&d.db, &d.table); err != nil {
			rows.Close()
			return nil, fmt.Errorf("databus: mysql: read catalog: %w", err)
		}
		if keep(d.db, d.table) {
			defs[d.name()] = &d
			order = append(order, d.name())
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(defs) == 0 {
		return nil, nil
	}
	rows, err = db.QueryContext(ctx, "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, CHARACTER_SET_NAME, "+
		"CHARACTER_OCTET_LENGTH, NUMERIC_PRECISION, NUMERIC_SCALE, DATETIME_PRECISION, COLUMN_KEY, COLLATION_NAME, EXTRA FROM information_schema.COLUMNS WHERE "+where+
		" ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION", args...)
	if err != nil {
		return nil, fmt.Errorf("databus: mysql: read catalog: %w", err)
	}
	pri := map[string][]string{} // table → COLUMN_KEY='PRI' columns
	for rows.Next() {
		var dbName, table, key, nullable string
		var cc catalogColumn
		var cs, coll, extra sql.NullString
		var octets, prec, scale, fsp sql.NullInt64
		if err := rows.Scan(&dbName, &table, &cc.name, &cc.dataType, &cc.columnType, &nullable, &cs, &octets, &prec, &scale, &fsp, &key, &coll, &extra); err != nil {
			rows.Close()
			return nil, fmt.Errorf("databus: mysql: read catalog: %w", err)
		}
		d := defs[dbName+"."+table]
		if d == nil {
			continue
		}
		cc.nullable = nullable == "YES"
		cc.charset, cc.octets, cc.prec, cc.scale, cc.fsp = cs.String, octets.Int64, prec.Int64, scale.Int64, fsp.Int64
		c, err := colDefFromCatalog(cc, charsets)
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("%w (table %s)", err, d.name())
		}
		c.cat = catalogFacts{dataType: strings.ToLower(cc.dataType), collation: coll.String, extra: strings.ToLower(extra.String)}
		d.cols = append(d.cols, c)
		if key == "PRI" {
			pri[d.name()] = append(pri[d.name()], cc.name)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	// The key: PRIMARY, or the unique index the server promotes to primary
	// key (the one whose columns information_schema marks PRI), in index
	// order, as the table map's primary-key metadata lists it.
	rows, err = db.QueryContext(ctx, "SELECT TABLE_SCHEMA, TABLE_NAME, INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS WHERE NON_UNIQUE = 0 AND "+
		where+" ORDER BY TABLE_SCHEMA, TABLE_NAME, INDEX_NAME = 'PRIMARY' DESC, INDEX_NAME, SEQ_IN_INDEX", args...)
	if err != nil {
		return nil, fmt.Errorf("databus: mysql: read catalog: %w", err)
	}
	indexes := map[string]map[string][]string{}
	var indexOrder = map[string][]string{}
	for rows.Next() {
		var dbName, table, index, col string
		if err := rows.Scan(&dbName, &table, &index, &col); err != nil {
			rows.Close()
			return nil, fmt.Errorf("databus: mysql: read catalog: %w", err)
		}
		name := dbName + "." + table
		if defs[name] == nil {
			continue
		}
		if indexes[name] == nil {
			indexes[name] = map[string][]string{}
		}
		if indexes[name][index] == nil {
			indexOrder[name] = append(indexOrder[name], index)
		}
		indexes[name][index] = append(indexes[name][index], col)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := make([]*tableDef, 0, len(order))
	for _, name := range order {
		d := defs[name]
		if len(d.cols) == 0 {
			continue // dropped meanwhile
		}
		want := map[string]bool{}
		for _, c := range pri[name] {
			want[c] = true
		}
		for _, idx := range indexOrder[name] {
			cols := indexes[name][idx]
			if len(cols) != len(want) {
				continue
			}
			match := true
			for _, c := range cols {
				match = match && want[c]
			}
			if !match {
				continue
			}
			for _, c := range cols {
				for i := range d.cols {
					if d.cols[i].name == c {
						d.key = append(d.key, i)
					}
				}
			}
			d.keyIndex = idx
			break
		}
		d.fillKey()
		out = append(out, d)
	}
	return out, nil
}

// binlogFiles lists the server's binlog files, oldest first.
func binlogFiles(ctx context.Context, db *sql.DB) ([]string, error) {
	rows, err := db.QueryContext(ctx, "SHOW BINARY LOGS")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	var files []string
	vals := make([]sql.RawBytes, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		files = append(files, string(vals[0]))
	}
	return files, rows.Err()
}

// masterStatus returns the current end of the binlog.
func masterStatus(ctx context.Context, db *sql.DB) (posData, error) {
	var p posData
	for _, q := range []string{"SHOW MASTER STATUS", "SHOW BINARY LOG STATUS"} {
		rows, err := db.QueryContext(ctx, q)
		if err != nil {
			var my *driver.MySQLError
			if errors.As(err, &my) && my.Number == 1064 { // syntax: MySQL 8.4 renamed it
				continue
			}
			return p, fmt.Errorf("databus: mysql: %s: %w", q, err)
		}
		cols, _ := rows.Columns()
		vals := make([]sql.RawBytes, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if !rows.Next() {
			rows.Close()
			return p, fmt.Errorf("databus: mysql: %s returned nothing: is log_bin ON?", q)
		}
		if err := rows.Scan(ptrs...); err != nil || len(cols) < 2 {
			rows.Close()
			return p, fmt.Errorf("databus: mysql: %s: %v", q, err)
		}
		p.File = string(vals[0])
		n, err := strconv.ParseUint(string(vals[1]), 10, 32)
		rows.Close()
		if err != nil {
			return p, fmt.Errorf("databus: mysql: %s: position %q", q, vals[1])
		}
		p.Pos = uint32(n)
		return p, nil
	}
	return p, errors.New("databus: mysql: the server knows neither SHOW MASTER STATUS nor SHOW BINARY LOG STATUS")
}

// state returns what Open set up, or ErrNotOpen.
func (s *Source) state() (*sql.DB, string, collationSet, *schemaStore, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return nil, "", nil, nil, ErrNotOpen
	}
	return s.db, s.flavor, s.colls, s.store, nil
}

// startPosition resolves where a run from `from` starts.
func (s *Source) startPosition(ctx context.Context, db *sql.DB, from source.Position) (p posData, fresh bool, err error) {
	p, ok, err := decodePosition(from)
	if err != nil || ok {
		return p, false, err
	}
	if from.SCN != 0 {
		// An SCN without data: the file number is in it, the name's prefix
		// is the server's.
		cur, err := masterStatus(ctx, db)
		if err != nil {
			return p, false, err
		}
		return posData{File: withNumber(cur.File, uint32(from.SCN>>32)), Pos: uint32(from.SCN)}, false, nil
	}
	if s.cfg.StartAt == StartAtOldest {
		files, err := binlogFiles(ctx, db)
		if err != nil {
			return p, false, fmt.Errorf("databus: mysql: SHOW BINARY LOGS: %w", err)
		}
		if len(files) == 0 {
			return p, false, errors.New("databus: mysql: the server has no binlog files")
		}
		return posData{File: files[0], Pos: 4}, true, nil
	}
	s.mu.Lock()
	end := s.openEnd
	s.mu.Unlock()
	if end != nil {
		return *end, true, nil
	}
	p, err = masterStatus(ctx, db)
	return p, true, err
}

// purgedError returns a *BinlogPurgedError when file is not among the
// server's binlogs, and nil when it is or when the list is not readable.
func purgedError(ctx context.Context, db *sql.DB, p posData, cause error) error {
	files, err := binlogFiles(ctx, db)
	if err != nil || len(files) == 0 {
		return nil
	}
	for _, f := range files {
		if f == p.File {
			return nil
		}
	}
	n, _ := fileNumber(p.File)
	return &BinlogPurgedError{File: p.File, Pos: p.Pos, SCN: makeSCN(n, p.Pos), Oldest: files[0], Cause: cause}
}

// emitError marks an error returned by emit, which Run returns as is.
type emitError struct{ err error }

func (e *emitError) Error() string { return e.err.Error() }
func (e *emitError) Unwrap() error { return e.err }

// Run streams the binlog from `from` and calls emit with one window per
// committed transaction. See the package doc for positions, SCNs and
// reconnection. It returns ctx's error when ctx is done, emit's error when
// emit fails, and otherwise only errors that reconnecting cannot cure.
func (s *Source) Run(ctx context.Context, from source.Position, emit func(context.Context, *source.Window) error) error {
	db, flavor, colls, store, err := s.state()
	if err != nil {
		return err
	}
	start, fresh, err := s.startPosition(ctx, db, from)
	if err != nil {
		return err
	}
	if err := purgedError(ctx, db, start, nil); err != nil {
		return err
	}
	c := newCapture(newTableCache(colls, flavor, s.filter, store), store, s.filter, s.cfg.HeartbeatInterval, int(s.cfg.ChunkBytes), s.cfg.ChunkEvents, s.now)
	startNum, err := fileNumber(start.File)
	if err != nil {
		return err
	}
	c.setLast(makeSCN(startNum, start.Pos), 0, start)
	if fresh {
		// Tell the relay where this run starts, so that it can persist a
		// concrete position before any transaction arrives.
		ts := s.now().UnixNano()
		c.last.ts = ts
		if err := emit(ctx, &source.Window{SCN: c.last.scn, Timestamp: ts, Position: start.position(c.last.scn)}); err != nil {
			return err
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	if s.cfg.HeartbeatTable != "" {
		wg.Go(func() { s.heartbeatWriter(ctx, db) })
	}

	backoff := s.cfg.MinBackoff
	for {
		progressed, err := s.stream(ctx, db, flavor, c, emit)
		var ee *emitError
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.As(err, &ee):
			return ee.err
		}
		var my *gomysql.MyError
		if errors.As(err, &my) && my.Code == erMasterFatalReadingLog {
			if perr := purgedError(ctx, db, c.last.pos, err); perr != nil {
				return perr
			}
			return fmt.Errorf("databus: mysql: the server cannot stream its binlog from %s:%d: %w", c.last.pos.File, c.last.pos.Pos, err)
		}
		if !retryable(err) {
			return err
		}
		if progressed {
			backoff = s.cfg.MinBackoff
		}
		s.log.Warn("mysql binlog stream failed; reconnecting", "err", err, "in", backoff, "file", c.last.pos.File, "pos", c.last.pos.Pos)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, s.cfg.MaxBackoff)
	}
}

// errStalled ends a stream that received nothing, not even a server
// heartbeat, for too long: the connection is presumed dead.
var errStalled = errors.New("databus: mysql: binlog stream stalled (no event or heartbeat); reconnecting")

// stallTimeout is how long a stream may stay silent: the server sends a
// heartbeat every HeartbeatInterval when it has nothing else to send.
func (s *Source) stallTimeout() time.Duration { return 3*s.cfg.HeartbeatInterval + 10*time.Second }

// stream runs one replication connection from the last window's position
// until it fails. progressed reports whether any event arrived.
func (s *Source) stream(ctx context.Context, db *sql.DB, flavor string, c *capture, emit func(context.Context, *source.Window) error) (progressed bool, err error) {
	out := func(w *source.Window) error {
		if err := emit(ctx, w); err != nil {
			return &emitError{err}
		}
		return nil
	}
	if err := c.reset(out); err != nil {
		return false, err
	}
	syncer := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID:                s.cfg.ServerID,
		Flavor:                  flavor,
		Host:                    s.cfg.Host,
		Port:                    uint16(s.cfg.Port),
		User:                    s.cfg.User,
		Password:                string(s.cfg.Password),
		ParseTime:               false,
		TimestampStringLocation: time.UTC,
		UseDecimal:              false, // exact decimal text, converted by the adapter
		HeartbeatPeriod:         s.cfg.HeartbeatInterval,
		DisableRetrySync:        true, // the adapter reconnects itself, at window boundaries
		DiscardGTIDSet:          true,
		EventCacheCount:         1024,
		Logger:                  slog.New(slog.DiscardHandler), // the adapter logs the errors it returns
	})
	defer syncer.Close()

	// A watchdog instead of go-mysql's ReadTimeout, which resets a socket
	// deadline for every packet: it cancels the stream when no event
	// arrives for stallTimeout while the adapter waits for one (time spent
	// in emit, where the relay may push back, does not count).
	sctx, cancel := context.WithCancelCause(ctx)
	var events atomic.Uint64
	var waiting atomic.Bool
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel(nil)
	wg.Go(func() {
		timeout := s.stallTimeout()
		t := time.NewTicker(timeout / 4)
		defer t.Stop()
		seen, since := events.Load(), time.Now()
		for {
			select {
			case <-sctx.Done():
				return
			case now := <-t.C:
				if n := events.Load(); n != seen || !waiting.Load() {
					seen, since = n, now
				} else if now.Sub(since) >= timeout {
					cancel(errStalled)
					return
				}
			}
		}
	})

	streamer, err := syncer.StartSync(gomysql.Position{Name: c.last.pos.File, Pos: c.last.pos.Pos})
	if err != nil {
		return false, cleanError(err)
	}
	for {
		waiting.Store(true)
		ev, err := streamer.GetEvent(sctx)
		waiting.Store(false)
		if err != nil {
			if cause := context.Cause(sctx); ctx.Err() == nil && errors.Is(cause, errStalled) {
				return progressed, errStalled
			}
			return progressed, cleanError(err)
		}
		events.Add(1)
		progressed = true
		if err := c.handle(ev, out); err != nil {
			return progressed, err
		}
	}
}

// heartbeatWriter updates the heartbeat table every heartbeat interval so
// that an idle server's binlog position advances.
func (s *Source) heartbeatWriter(ctx context.Context, db *sql.DB) {
	dbName, table, _ := strings.Cut(s.cfg.HeartbeatTable, ".")
	q := "INSERT INTO " + quoteIdent(dbName) + "." + quoteIdent(table) + " (id, ts) VALUES (?, NOW(6)) ON DUPLICATE KEY UPDATE ts = NOW(6)"
	t := time.NewTicker(s.cfg.HeartbeatInterval)
	defer t.Stop()
	var lastWarn time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := db.ExecContext(ctx, q, s.cfg.ServerID); err != nil && ctx.Err() == nil && time.Since(lastWarn) > time.Minute {
			lastWarn = time.Now()
			s.log.Warn("mysql heartbeat table update failed", "table", s.cfg.HeartbeatTable, "err", err)
		}
	}
}

// Release records pos as released. The server purges binlogs by its own
// retention (binlog_expire_logs_seconds), which the adapter cannot hold
// back, so there is nothing to confirm.
func (s *Source) Release(ctx context.Context, pos source.Position) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if pos.SCN > s.released.SCN {
		s.released = pos
	}
	return nil
}

// Released returns the newest position passed to Release.
func (s *Source) Released() source.Position {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.released
}

// Close closes the catalog connection pool. Run must have returned.
func (s *Source) Close() error {
	s.mu.Lock()
	db := s.db
	s.db = nil
	s.mu.Unlock()
	if db != nil {
		return db.Close()
	}
	return nil
}
