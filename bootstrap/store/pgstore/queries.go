package pgstore

import (
	"fmt"
	"strings"
)

// queries holds the SQL of one store, with its schema name quoted in.
type queries struct {
	schema string // quoted identifier

	ddl        []string
	insertMeta string
	readID     string
	readState  string
	lockMeta   string
	updateMeta string

	insertSchema string
	upsertSeed   string
	upsertRows   string // unnest() of arrays into snapshot
	truncate     string

	readSchemas string
	readSeeds   string

	logSizes string
	logRead  string
	logLW    string

	purgeLog        string
	purgeMeta       string
	purgeTombstones string
}

func newQueries(schema string) queries {
	// s replaces every "S." with the quoted schema.
	s := func(q string) string { return strings.ReplaceAll(q, "S.", schema+".") }
	return queries{
		schema: schema,
		ddl: []string{
			"CREATE SCHEMA IF NOT EXISTS " + schema,
			s(`CREATE TABLE IF NOT EXISTS S.meta (
				id int PRIMARY KEY CHECK (id = 1),
				format int NOT NULL,
				store_id text NOT NULL,
				head bigint NOT NULL,
				head_time bigint NOT NULL,
				low_watermark bigint NOT NULL,
				empty boolean NOT NULL,
				windows bigint NOT NULL)`),
			s(`CREATE TABLE IF NOT EXISTS S.log (
				scn bigint PRIMARY KEY,
				ts bigint NOT NULL,
				frames bytea NOT NULL)`),
			s(`CREATE TABLE IF NOT EXISTS S.snapshot (
				source bigint NOT NULL,
				key bytea NOT NULL,
				scn bigint NOT NULL,
				ts bigint NOT NULL,
				deleted boolean NOT NULL,
				ikey bigint,
				modhash bigint,
				frame bytea,
				PRIMARY KEY (source, key))`),
			s(`CREATE INDEX IF NOT EXISTS snapshot_tombstones ON S.snapshot (ts) WHERE deleted`),
			s(`CREATE TABLE IF NOT EXISTS S.schemas (
				source bigint NOT NULL,
				version int NOT NULL,
				def bytea NOT NULL,
				PRIMARY KEY (source, version))`),
			s(`CREATE TABLE IF NOT EXISTS S.seeds (
				tbl text PRIMARY KEY,
				run text NOT NULL,
				cursor text NOT NULL,
				rows bigint NOT NULL,
				done boolean NOT NULL,
				started bigint,
				updated bigint)`),
		},
		insertMeta: s(`INSERT INTO S.meta (id, format, store_id, head, head_time, low_watermark, empty, windows)
			VALUES (1, $1, $2, 0, 0, 0, true, 0) ON CONFLICT (id) DO NOTHING`),
		readID:     s(`SELECT store_id, format FROM S.meta WHERE id = 1`),
		readState:  s(`SELECT store_id, head, head_time, empty, low_watermark, windows FROM S.meta WHERE id = 1`),
		lockMeta:   s(`SELECT head, head_time, empty, low_watermark FROM S.meta WHERE id = 1 FOR UPDATE`),
		updateMeta: s(`UPDATE S.meta SET head = $1, head_time = $2, low_watermark = $3, empty = false, windows = windows + $4 WHERE id = 1`),

		insertSchema: s(`INSERT INTO S.schemas (source, version, def) VALUES ($1, $2, $3) ON CONFLICT (source, version) DO NOTHING`),
		upsertSeed: s(`INSERT INTO S.seeds (tbl, run, cursor, rows, done, started, updated) VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (tbl) DO UPDATE SET run = excluded.run, cursor = excluded.cursor, rows = excluded.rows,
			done = excluded.done, started = excluded.started, updated = excluded.updated`),
		upsertRows: s(`INSERT INTO S.snapshot (source, key, scn, ts, deleted, ikey, modhash, frame)
			SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bigint[], $4::bigint[], $5::boolean[], $6::bigint[], $7::bigint[], $8::bytea[])
			ON CONFLICT (source, key) DO UPDATE SET scn = excluded.scn, ts = excluded.ts, deleted = excluded.deleted, frame = excluded.frame`),
		truncate: s(`UPDATE S.snapshot SET deleted = true, scn = $2, ts = $3, frame = NULL WHERE source = $1 AND NOT deleted`),

		readSchemas: s(`SELECT def FROM S.schemas ORDER BY source, version`),
		readSeeds:   s(`SELECT tbl, run, cursor, rows, done, started, updated FROM S.seeds ORDER BY tbl`),

		// octet_length of a TOASTed bytea is read from its pointer, without
		// fetching the value: sizing a page costs an index scan.
		logSizes: s(`SELECT scn, octet_length(frames) FROM S.log WHERE scn > $1 AND scn <= $2 ORDER BY scn LIMIT $3`),
		logRead:  s(`SELECT scn, frames FROM S.log WHERE scn > $1 AND scn <= $2 ORDER BY scn`),
		logLW:    s(`SELECT low_watermark, empty FROM S.meta WHERE id = 1`),

		// The log is purged as a prefix: up to (not including) the first
		// window committed at or after $1, and never the head ($2).
		purgeLog: s(`WITH keep AS (
				SELECT least(coalesce((SELECT scn FROM S.log WHERE ts >= $1 ORDER BY scn LIMIT 1), $2), $2) AS scn
			), del AS (
				DELETE FROM S.log WHERE scn < (SELECT scn FROM keep) RETURNING scn
			) SELECT count(*), coalesce(max(scn), 0) FROM del`),
		purgeMeta:       s(`UPDATE S.meta SET low_watermark = $1, windows = windows - $2 WHERE id = 1`),
		purgeTombstones: s(`DELETE FROM S.snapshot WHERE deleted AND ts < $1`),
	}
}

// rowFilter is the SQL push-down of a filter.Filter, appended to a WHERE
// clause. It selects a superset of the filter's rows: callers check each
// row with the filter itself.
type rowFilter struct {
	sql  string
	args []any
}

// pushDown translates the sources and partition of a filter into SQL
// conditions with parameters numbered from next. keepNull keeps the rows
// whose MOD bucket SQL cannot compute (modhash NULL); without it the MOD
// condition leaves them out.
func pushDown(sources []int64, part partitionSQL, keepNull bool, next int) rowFilter {
	var b strings.Builder
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		next++
		return fmt.Sprintf("$%d", next-1)
	}
	if sources != nil {
		if len(sources) == 1 {
			// Equality lets the planner bound the index scan on source.
			fmt.Fprintf(&b, " AND source = %s", arg(sources[0]))
		} else {
			fmt.Fprintf(&b, " AND source = ANY(%s::bigint[])", arg(sources))
		}
	}
	switch {
	case part.ranges != nil:
		// RANGE matches only single-integer keys, which are exactly the
		// rows with a non-null ikey.
		b.WriteString(" AND (")
		for i, r := range part.ranges {
			if i > 0 {
				b.WriteString(" OR ")
			}
			fmt.Fprintf(&b, "(ikey >= %s AND ikey < %s)", arg(r[0]), arg(r[1]))
		}
		b.WriteString(")")
	case part.n > 0:
		// modhash % n is the bucket of every key whose modhash is known;
		// the others (integer keys of magnitude >= 2^63) are checked in Go.
		cond := fmt.Sprintf("modhash %% %s = ANY(%s::bigint[])", arg(int64(part.n)), arg(part.buckets))
		if keepNull {
			cond = "(modhash IS NULL OR " + cond + ")"
		}
		b.WriteString(" AND " + cond)
	}
	return rowFilter{sql: b.String(), args: args}
}

// partitionSQL is a filter.Partition in the shape pushDown needs.
type partitionSQL struct {
	ranges  [][2]int64 // RANGE: [lo, hi) pairs
	n       uint32     // MOD: bucket count (0: no MOD)
	buckets []int64    // MOD: selected buckets
}
