package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/databus-go/databus/schema"
	"github.com/databus-go/databus/source"
)

// Source captures a PostgreSQL database's changes through a logical
// replication slot with the pgoutput plugin. It implements source.Source;
// see the package doc for what it guarantees.
type Source struct {
	cfg Config
	log *slog.Logger

	// released is the newest position the relay released: the only LSN the
	// adapter ever confirms to the slot. Invariant: non-decreasing.
	released atomic.Uint64

	// mu guards the fields below it; Run reads them once at its start.
	mu      sync.Mutex
	closed  bool
	opened  bool
	running bool
	cat     *catalog
	store   *schemaStore
	version int // server_version_num
	proto   int // pgoutput protocol version
	replCfg *pgconn.Config
	hbCfg   *pgx.ConnConfig
	wake    func() // wakes the running capture loop (Release); nil when none

	stats stats
	descs *metricDescs // of the Prometheus metrics (see metrics.go)
}

// stats are the counters behind Stats, written by Run's goroutines.
type stats struct {
	lastSCN       atomic.Uint64
	lastWindow    atomic.Int64 // unix ns
	lastHeartbeat atomic.Int64 // unix ns
	serverLSN     atomic.Uint64
	slotConfirmed atomic.Uint64
	reconnects    atomic.Uint64
	chunks        atomic.Uint64
	held          atomic.Int64
	spilled       atomic.Int64
	open          atomic.Int64
	started       atomic.Int64 // unix ns, start of the current (or last) Run
	streaming     atomic.Bool
	walStatus     atomic.Value // string
}

// Stats is a snapshot of the adapter's state, for metrics and status pages.
type Stats struct {
	// ReleasedLSN is the newest position the relay released, which is what
	// the adapter confirms to the slot.
	ReleasedLSN uint64
	// SlotConfirmedLSN is the slot's confirmed_flush_lsn and ServerLSN the
	// server's pg_current_wal_lsn(), both read at the last refresh (every
	// HeartbeatInterval while Run runs).
	SlotConfirmedLSN uint64
	ServerLSN        uint64
	// SlotLagBytes is ServerLSN - SlotConfirmedLSN: the WAL the server keeps
	// for this slot.
	SlotLagBytes uint64
	// WALStatus is the slot's wal_status (reserved, extended, unreserved,
	// lost), "" before PostgreSQL 13.
	WALStatus string
	// LastSCN is the SCN of the newest window emitted.
	LastSCN uint64
	// LastWindow is when the newest window was emitted, LastHeartbeat when
	// the newest heartbeat window was, and HeartbeatAge the time since
	// (zero when none was).
	LastWindow    time.Time
	LastHeartbeat time.Time
	HeartbeatAge  time.Duration
	// Reconnects counts the replication sessions started again after a
	// failure.
	Reconnects uint64
	// HeldBytes is the memory taken by the events of open transactions not
	// yet handed to the relay (keys and images, plus about 128 bytes an
	// event): at most about Config.ChunkBytes.
	HeldBytes int64
	// SpilledBytes is the size of the spill files of open streamed
	// transactions, and OpenTransactions the number of open transactions
	// (streamed ones, and the plain one being read).
	SpilledBytes     int64
	OpenTransactions int
	// Chunks counts the chunks of large windows emitted
	// (source.Window.Partial).
	Chunks uint64
	// Streaming reports whether a replication session is up.
	Streaming bool
}

// Stats returns a snapshot of the adapter's state. It is safe to call at
// any time.
func (s *Source) Stats() Stats {
	st := Stats{
		ReleasedLSN:      s.released.Load(),
		SlotConfirmedLSN: s.stats.slotConfirmed.Load(),
		ServerLSN:        s.stats.serverLSN.Load(),
		LastSCN:          s.stats.lastSCN.Load(),
		Reconnects:       s.stats.reconnects.Load(),
		HeldBytes:        s.stats.held.Load(),
		SpilledBytes:     s.stats.spilled.Load(),
		OpenTransactions: int(s.stats.open.Load()),
		Chunks:           s.stats.chunks.Load(),
		Streaming:        s.stats.streaming.Load(),
	}
	if st.ServerLSN > st.SlotConfirmedLSN && st.SlotConfirmedLSN > 0 {
		st.SlotLagBytes = st.ServerLSN - st.SlotConfirmedLSN
	}
	if w, ok := s.stats.walStatus.Load().(string); ok {
		st.WALStatus = w
	}
	if ns := s.stats.lastWindow.Load(); ns != 0 {
		st.LastWindow = time.Unix(0, ns)
	}
	if ns := s.stats.lastHeartbeat.Load(); ns != 0 {
		st.LastHeartbeat = time.Unix(0, ns)
		st.HeartbeatAge = time.Since(st.LastHeartbeat)
	}
	return st
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
	s := &Source{cfg: cfg.withDefaults(), log: slog.Default(), descs: newMetricDescs()}
	for _, o := range opts {
		o(s)
	}
	s.log = s.log.With("source", "postgres", "slot", s.cfg.Slot)
	return s, nil
}

var (
	_ source.Source        = (*Source)(nil)
	_ prometheus.Collector = (*Source)(nil)
)

// Session settings of the replication connection: they fix the text form
// pgoutput renders values in, which the decoder parses.
var replicationParams = map[string]string{
	"DateStyle":          "ISO",
	"IntervalStyle":      "iso_8601",
	"TimeZone":           "UTC",
	"bytea_output":       "hex",
	"extra_float_digits": "3",
	"client_encoding":    "UTF8",
}

// configs derives the three connection configurations from the connection
// string: catalog queries, heartbeats and the replication stream.
func (s *Source) configs() (cat, hb *pgx.ConnConfig, repl *pgconn.Config, err error) {
	parse := func(app string) (*pgx.ConnConfig, error) {
		c, err := pgx.ParseConfig(string(s.cfg.ConnString))
		if err != nil {
			return nil, fmt.Errorf("%w: ConnString: %v", ErrConfig, err)
		}
		delete(c.RuntimeParams, "replication")
		if c.RuntimeParams["application_name"] == "" {
			c.RuntimeParams["application_name"] = app
		}
		return c, nil
	}
	if cat, err = parse("databus"); err != nil {
		return nil, nil, nil, err
	}
	if hb, err = parse("databus heartbeat"); err != nil {
		return nil, nil, nil, err
	}
	// A heartbeat must reach the WAL stream at once: commit flushes locally
	// without waiting for synchronous standbys.
	hb.RuntimeParams["synchronous_commit"] = "local"
	if repl, err = pgconn.ParseConfig(string(s.cfg.ConnString)); err != nil {
		return nil, nil, nil, fmt.Errorf("%w: ConnString: %v", ErrConfig, err)
	}
	if repl.RuntimeParams["application_name"] == "" {
		repl.RuntimeParams["application_name"] = "databus"
	}
	for k, v := range replicationParams {
		repl.RuntimeParams[k] = v
	}
	repl.RuntimeParams["replication"] = "database"
	return cat, hb, repl, nil
}

// Open connects, checks the server's settings, the role, the tables, the
// publication and the slot (creating the last two when absent and allowed)
// and returns the current definition of every captured table, read from
// the catalog (the log decides the definitions events are decoded with).
// It may be called again after a failure.
func (s *Source) Open(ctx context.Context) ([]schema.Table, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	store := s.store
	s.mu.Unlock()
	catCfg, hbCfg, replCfg, err := s.configs()
	if err != nil {
		return nil, err
	}
	cat := newCatalog(catCfg)
	tables, version, proto, err := s.open(ctx, cat)
	if err != nil {
		cat.close()
		return nil, err
	}
	if store == nil {
		if store, err = openSchemaStore(s.cfg.StateDir); err != nil {
			cat.close()
			return nil, err
		}
	}
	if err := resetSpillDir(spillPath(s.cfg.StateDir)); err != nil {
		cat.close()
		return nil, err
	}
	out := make([]schema.Table, 0, len(tables))
	for _, t := range tables {
		r, err := store.resolve(t)
		if err != nil {
			cat.close()
			return nil, err
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	s.mu.Lock()
	old := s.cat
	s.cat, s.store, s.version, s.proto, s.replCfg, s.hbCfg, s.opened = cat, store, version, proto, replCfg, hbCfg, true
	s.mu.Unlock()
	if old != nil {
		old.close()
	}
	s.log.Info("postgres source open", "server", describeConn(catCfg), "version", version, "protocol", proto, "tables", len(out))
	return out, nil
}

func (s *Source) open(ctx context.Context, cat *catalog) ([]schema.Table, int, int, error) {
	conn, err := cat.get(ctx)
	if err != nil {
		return nil, 0, 0, err
	}
	var versionText, walLevel, maxSlots, maxSenders string
	if err := conn.QueryRow(ctx, `SELECT current_setting('server_version_num'), current_setting('wal_level'),
		current_setting('max_replication_slots'), current_setting('max_wal_senders')`).Scan(&versionText, &walLevel, &maxSlots, &maxSenders); err != nil {
		return nil, 0, 0, fmt.Errorf("databus: postgres: read server settings: %w", err)
	}
	version, _ := strconv.Atoi(versionText)
	cat.version = version
	if version < 100000 {
		return nil, 0, 0, &SettingError{Setting: "version", Value: versionText, Fix: "logical replication with pgoutput needs PostgreSQL 10 or later"}
	}
	if walLevel != "logical" {
		return nil, 0, 0, &SettingError{Setting: "wal_level", Value: walLevel, Fix: "set wal_level=logical in postgresql.conf and restart"}
	}
	if maxSlots == "0" {
		return nil, 0, 0, &SettingError{Setting: "max_replication_slots", Value: "0", Fix: "set max_replication_slots to at least 1 (one per relay) in postgresql.conf and restart"}
	}
	if maxSenders == "0" {
		return nil, 0, 0, &SettingError{Setting: "max_wal_senders", Value: "0", Fix: "set max_wal_senders to at least 1 (one per relay) in postgresql.conf and restart"}
	}
	proto := s.cfg.ProtocolVersion
	switch {
	case proto == 0 && version >= 140000:
		proto = 2
	case proto == 0:
		proto = 1
	case proto == 2 && version < 140000:
		return nil, 0, 0, &SettingError{Setting: "version", Value: versionText, Fix: "pgoutput protocol version 2 needs PostgreSQL 14; set ProtocolVersion to 0 or 1"}
	}
	var role string
	var repl, super bool
	if err := conn.QueryRow(ctx, `SELECT rolname::text, rolreplication, rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user`).Scan(&role, &repl, &super); err != nil {
		return nil, 0, 0, fmt.Errorf("databus: postgres: read the role's attributes: %w", err)
	}
	if !repl && !super {
		return nil, 0, 0, &SettingError{Setting: "role " + role + "'s REPLICATION attribute", Value: "off",
			Fix: "run ALTER ROLE " + pgx.Identifier{role}.Sanitize() + " WITH REPLICATION (or connect as a superuser)"}
	}
	var tables []schema.Table
	for i, name := range s.cfg.Tables {
		ns, rel, _ := strings.Cut(name, ".")
		ct, ok, err := cat.describeTable(ctx, ns, rel)
		if err != nil {
			return nil, 0, 0, err
		}
		if !ok {
			return nil, 0, 0, fmt.Errorf("databus: postgres: table %s (Tables[%d]) does not exist in database %s", name, i, cat.cfg.Database)
		}
		if ct.kind != "r" {
			return nil, 0, 0, fmt.Errorf("databus: postgres: %s (Tables[%d]) is not an ordinary table (relkind %s); only ordinary tables are captured", name, i, ct.kind)
		}
		t, err := cat.buildTable(ctx, name, ct.cols, ct.key)
		if err != nil {
			return nil, 0, 0, err
		}
		if err := (&t).Validate(); err != nil {
			return nil, 0, 0, err
		}
		tables = append(tables, t)
	}
	// The seed's watermark tables that exist are captured like the
	// configured tables (see "Seeding" in the package doc).
	var marks []string
	for _, name := range watermarkTables(s.cfg.Tables) {
		ns, rel, _ := strings.Cut(name, ".")
		ct, ok, err := cat.describeTable(ctx, ns, rel)
		if err != nil {
			return nil, 0, 0, err
		}
		if !ok || ct.kind != "r" {
			continue
		}
		t, err := cat.buildTable(ctx, name, ct.cols, ct.key)
		if err != nil {
			return nil, 0, 0, err
		}
		if err := (&t).Validate(); err != nil {
			return nil, 0, 0, err
		}
		tables = append(tables, t)
		marks = append(marks, name)
	}
	if err := s.ensurePublication(ctx, conn, version, marks); err != nil {
		return nil, 0, 0, err
	}
	if err := s.ensureSlot(ctx, conn, version); err != nil {
		return nil, 0, 0, err
	}
	return tables, version, proto, nil
}

func quoteTable(name string) string {
	ns, rel, _ := strings.Cut(name, ".")
	return pgx.Identifier{ns, rel}.Sanitize()
}

// ensurePublication checks that the publication publishes every change of
// every captured table, creating it or adding tables when allowed. marks
// are the existing watermark tables: included when the publication is
// created or tables are added, but a publication without them is only
// reported (WriteWatermark adds them, or says what to run).
func (s *Source) ensurePublication(ctx context.Context, conn *pgx.Conn, version int, marks []string) error {
	pub := s.cfg.Publication
	qpub := pgx.Identifier{pub}.Sanitize()
	var ins, upd, del, all bool
	trunc := true
	q := `SELECT pubinsert, pubupdate, pubdelete, puballtables, pubtruncate FROM pg_catalog.pg_publication WHERE pubname = $1`
	if version < 110000 {
		q = `SELECT pubinsert, pubupdate, pubdelete, puballtables, true FROM pg_catalog.pg_publication WHERE pubname = $1`
	}
	err := conn.QueryRow(ctx, q, pub).Scan(&ins, &upd, &del, &all, &trunc)
	if errors.Is(err, pgx.ErrNoRows) {
		all := append(append([]string(nil), s.cfg.Tables...), marks...)
		list := make([]string, len(all))
		for i, t := range all {
			list[i] = quoteTable(t)
		}
		stmt := "CREATE PUBLICATION " + qpub + " FOR TABLE " + strings.Join(list, ", ")
		if !s.cfg.createPublication() {
			return fmt.Errorf("databus: postgres: publication %q does not exist; create it with %s (or let the adapter: CreatePublication)", pub, stmt)
		}
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("databus: postgres: %s: %w (the role must own the tables)", stmt, err)
		}
		s.log.Info("created publication", "publication", pub, "tables", all)
		return nil
	}
	if err != nil {
		return fmt.Errorf("databus: postgres: look up publication %q: %w", pub, err)
	}
	var missingOps []string
	for _, op := range []struct {
		name string
		on   bool
	}{{"insert", ins}, {"update", upd}, {"delete", del}, {"truncate", trunc}} {
		if !op.on {
			missingOps = append(missingOps, op.name)
		}
	}
	if len(missingOps) > 0 {
		return &SettingError{Setting: "publication " + pub, Value: "not publishing " + strings.Join(missingOps, ", "),
			Fix: "run ALTER PUBLICATION " + qpub + " SET (publish = 'insert, update, delete, truncate'): consumers would miss those changes"}
	}
	if all {
		return nil
	}
	rows, err := conn.Query(ctx, `SELECT schemaname::text || '.' || tablename::text FROM pg_catalog.pg_publication_tables WHERE pubname = $1`, pub)
	if err != nil {
		return fmt.Errorf("databus: postgres: read the tables of publication %q: %w", pub, err)
	}
	have, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("databus: postgres: read the tables of publication %q: %w", pub, err)
	}
	in := map[string]bool{}
	for _, t := range have {
		in[t] = true
	}
	var missing, missingMarks []string
	for _, t := range s.cfg.Tables {
		if !in[t] {
			missing = append(missing, quoteTable(t))
		}
	}
	for _, t := range marks {
		if !in[t] {
			missingMarks = append(missingMarks, quoteTable(t))
		}
	}
	if !s.cfg.createPublication() && len(missingMarks) > 0 {
		s.log.Warn("the publication does not include the seed's watermark tables: seeds of their schemas will fail until it does",
			"publication", pub, "tables", missingMarks, "fix", "ALTER PUBLICATION "+qpub+" ADD TABLE "+strings.Join(missingMarks, ", "))
	} else {
		missing = append(missing, missingMarks...)
	}
	if len(missing) > 0 {
		stmt := "ALTER PUBLICATION " + qpub + " ADD TABLE " + strings.Join(missing, ", ")
		if !s.cfg.createPublication() {
			return fmt.Errorf("databus: postgres: publication %q does not include %s; run %s", pub, strings.Join(missing, ", "), stmt)
		}
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("databus: postgres: %s: %w (the role must own the publication and the tables)", stmt, err)
		}
		s.log.Info("added tables to the publication", "publication", pub, "tables", missing)
	}
	if version >= 150000 {
		// Row filters and column lists would hide rows and columns.
		rows, err := conn.Query(ctx, `SELECT n.nspname::text || '.' || c.relname::text, pr.prqual IS NOT NULL, pr.prattrs IS NOT NULL
			FROM pg_catalog.pg_publication_rel pr JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
			JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
			WHERE p.pubname = $1`, pub)
		if err != nil {
			return fmt.Errorf("databus: postgres: read the tables of publication %q: %w", pub, err)
		}
		defer rows.Close()
		captured := map[string]bool{}
		for _, t := range append(append([]string(nil), s.cfg.Tables...), marks...) {
			captured[t] = true
		}
		for rows.Next() {
			var name string
			var filter, cols bool
			if err := rows.Scan(&name, &filter, &cols); err != nil {
				return err
			}
			if captured[name] && (filter || cols) {
				return &SettingError{Setting: "publication " + pub, Value: "filtering " + name + " (a row filter or column list)",
					Fix: "publish the table whole: ALTER PUBLICATION " + qpub + " SET TABLE ... without WHERE or a column list"}
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
	}
	return nil
}

// ensureSlot checks the slot, creating it when absent and allowed.
func (s *Source) ensureSlot(ctx context.Context, conn *pgx.Conn, version int) error {
	slot := s.cfg.Slot
	info, ok, err := readSlot(ctx, conn, slot, version)
	if err != nil {
		return err
	}
	if !ok {
		if !s.cfg.createSlot() {
			return fmt.Errorf("databus: postgres: replication slot %q does not exist; create it with SELECT pg_create_logical_replication_slot('%s', 'pgoutput') (or let the adapter: CreateSlot)", slot, slot)
		}
		var lsn string
		if err := conn.QueryRow(ctx, `SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')`, slot).Scan(&lsn); err != nil {
			return fmt.Errorf("databus: postgres: create replication slot %q: %w", slot, err)
		}
		s.log.Info("created replication slot", "lsn", lsn)
		return nil
	}
	return info.check(slot, 0)
}

// slotInfo is a row of pg_replication_slots.
type slotInfo struct {
	plugin, slotType, walStatus string
	database                    string
	confirmed                   uint64
	sameDB                      bool
}

func readSlot(ctx context.Context, conn *pgx.Conn, slot string, version int) (slotInfo, bool, error) {
	var si slotInfo
	var plugin, db, confirmed *string
	walStatus := "''"
	if version >= 130000 {
		walStatus = "coalesce(wal_status, '')"
	}
	err := conn.QueryRow(ctx, `SELECT plugin::text, slot_type, database::text, database = current_database(),
		confirmed_flush_lsn::text, `+walStatus+` FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`, slot).
		Scan(&plugin, &si.slotType, &db, &si.sameDB, &confirmed, &si.walStatus)
	if errors.Is(err, pgx.ErrNoRows) {
		return si, false, nil
	}
	if err != nil {
		return si, false, fmt.Errorf("databus: postgres: look up replication slot %q: %w", slot, err)
	}
	if plugin != nil {
		si.plugin = *plugin
	}
	if db != nil {
		si.database = *db
	}
	if confirmed != nil {
		lsn, err := pglogrepl.ParseLSN(*confirmed)
		if err != nil {
			return si, false, fmt.Errorf("databus: postgres: slot %q confirmed_flush_lsn %q: %w", slot, *confirmed, err)
		}
		si.confirmed = uint64(lsn)
	}
	return si, true, nil
}

// check refuses a slot that is not a pgoutput slot of this database, or
// that lost WAL. from is the position a run resumes at (0 at Open).
func (si slotInfo) check(slot string, from uint64) error {
	switch {
	case si.slotType != "logical" || si.plugin != "pgoutput":
		return fmt.Errorf("databus: postgres: replication slot %q is a %s slot with plugin %q; it must be a logical slot with plugin pgoutput: use another Slot name",
			slot, si.slotType, si.plugin)
	case !si.sameDB:
		return fmt.Errorf("databus: postgres: replication slot %q belongs to database %q, not the one in ConnString: use another Slot name", slot, si.database)
	case si.walStatus == "lost":
		return &SlotLostError{Slot: slot, Reason: "invalidated", SCN: from}
	case from > 0 && si.confirmed > from:
		return &SlotLostError{Slot: slot, Reason: "ahead", SCN: from, Confirmed: si.confirmed}
	}
	return nil
}

// Release records pos as the position up to which the slot may be
// confirmed; the running capture loop confirms it at once (standby status
// update with flush = pos.SCN), a later run at its start. It never fails.
func (s *Source) Release(_ context.Context, pos source.Position) error {
	for {
		old := s.released.Load()
		if pos.SCN <= old {
			return nil
		}
		if s.released.CompareAndSwap(old, pos.SCN) {
			break
		}
	}
	s.mu.Lock()
	wake := s.wake
	s.mu.Unlock()
	if wake != nil {
		wake()
	}
	return nil
}

// Close releases the adapter's connections and removes its spill
// directory. Run must have returned.
func (s *Source) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	cat, opened := s.cat, s.opened
	s.cat = nil
	s.mu.Unlock()
	if cat != nil {
		cat.close()
	}
	if opened {
		if err := os.RemoveAll(spillPath(s.cfg.StateDir)); err != nil {
			return fmt.Errorf("%w: %v", errSpill, err)
		}
	}
	return nil
}

// resolver resolves relation messages against the schema store, asking the
// catalog only for definitions never seen before.
type resolver struct {
	cat   *catalog
	store *schemaStore
}

func (r *resolver) resolveRelation(ctx context.Context, m *pglogrepl.RelationMessage) (schema.Table, error) {
	name := m.Namespace + "." + m.RelationName
	// The digest identifies the definition as the log carries it.
	parts := []any{string(rune(m.ReplicaIdentity))}
	for _, c := range m.Columns {
		parts = append(parts, []any{c.Name, c.DataType, c.TypeModifier, c.Flags})
	}
	digest, _ := json.Marshal(parts)
	return r.store.resolveRelation(name, string(digest), func() (schema.Table, error) {
		cols := make([]colSpec, len(m.Columns))
		var key []string
		for i, c := range m.Columns {
			cols[i] = colSpec{name: c.Name, oid: c.DataType, typmod: c.TypeModifier}
			if c.Flags&1 != 0 {
				key = append(key, c.Name)
			}
		}
		if m.ReplicaIdentity == 'f' {
			// Every column is flagged: the key is the primary key.
			pk, err := r.cat.primaryKey(ctx, m.RelationID)
			if err != nil {
				return schema.Table{}, err
			}
			key = pk
		}
		return r.cat.buildTable(ctx, name, cols, key)
	})
}
