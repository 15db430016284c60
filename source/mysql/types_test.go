package mysql

import (
	"bytes"
	"math"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/internal/dbtest"
	"github.com/databus-go/databus/schema"
)

const typesTable = `CREATE TABLE types.t (
	id INT PRIMARY KEY,
	ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
	mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED,
	bi BIGINT, biu BIGINT UNSIGNED,
	d DECIMAL(65,30), d2 DECIMAL(10,2),
	f FLOAT, dbl DOUBLE,
	b1 BIT(1), b64 BIT(64),
	dt DATE, tm TIME(6), tm0 TIME, dtm DATETIME(6), ts TIMESTAMP(6) NULL, y YEAR,
	c CHAR(10), vc VARCHAR(100), tx TEXT, lat VARCHAR(10) CHARACTER SET latin1,
	bin BINARY(4), vb VARBINARY(10), bl BLOB, mbl MEDIUMBLOB,
	j JSON,
	e ENUM('a','b','it''s'), st SET('x','y','z'),
	g GEOMETRY, pt POINT,
	nn DATETIME NOT NULL DEFAULT '2000-01-01 00:00:00'
) CHARACTER SET utf8mb4`

// TestTypes round-trips one row per extreme of every type, an all-NULL row
// and zero dates through the binlog and Avro.
func TestTypes(t *testing.T) {
	srv := dbtest.SharedMariaDB(t)
	dropDatabases(t, srv, "types")
	srv.Exec(t, "CREATE DATABASE types", typesTable)
	db := srv.DB(t, "types")
	cfg := testConfig(t, srv, "types")
	s, tables := openSource(t, cfg)
	from := binlogEnd(t, db)

	// schema.Codec refuses values above 1 MiB (hamba's default limit);
	// TestLargeBlob checks a 16 MiB value without it.
	big16 := bytes.Repeat([]byte{0xA5}, 1<<20-7)
	const nines = "99999999999999999999999999999999999.999999999999999999999999999999"
	if _, err := db.Exec(`INSERT INTO t VALUES (1,
		127, 255, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295,
		9223372036854775807, 18446744073709551615,
		`+nines+`, 99999999.99,
		3.40282e38, 1.7976931348623157e308,
		b'1', b'1111111111111111111111111111111111111111111111111111111111111111',
		'9999-12-31', '838:59:59.000000', '-838:59:59', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999', 2155,
		'abc  ', '🚀 utf8mb4 ✓', 'text', 'é€',
		'ab', x'00ff00', x'deadbeef', ?,
		'{"k": [1, 2.5, "s"]}',
		'it''s', 'x,z',
		ST_GeomFromText('LINESTRING(0 0,1 1)'), POINT(1, 2),
		'2000-01-01 00:00:00')`, big16); err != nil {
		t.Fatal(err)
	}
	srv.Exec(t, `INSERT INTO types.t VALUES (2,
		-128, 0, -32768, 0, -8388608, 0, -2147483648, 0,
		-9223372036854775808, 0,
		-`+nines+`, -99999999.99,
		-1.5, -2.2250738585072014e-308,
		b'0', b'0',
		'1000-01-01', '-838:59:59.000000', '00:00:00', '1000-01-01 00:00:00.000000', '1970-01-01 00:00:01.000000', 1901,
		'', '', '', '',
		'', '', '', '',
		'[]',
		'a', '',
		POINT(0, 0), POINT(0, 0),
		'2000-01-01 00:00:00')`,
		"INSERT INTO types.t (id) VALUES (3)",
		"SET SESSION sql_mode = ''",
		"INSERT INTO types.t (id, dt, tm, dtm, ts, nn) VALUES (4, '0000-00-00', '-00:00:00.5', '2024-00-15 10:00:00', '0000-00-00 00:00:00', '0000-00-00 00:00:00')",
		"SET SESSION sql_mode = DEFAULT",
	)
	// Geometry values as the server stores them (SRID prefix + WKB).
	geo := map[int][2][]byte{}
	rows, err := db.Query("SELECT id, g, pt FROM t WHERE id < 3")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int
		var g, pt []byte
		if err := rows.Scan(&id, &g, &pt); err != nil {
			t.Fatal(err)
		}
		geo[id] = [2][]byte{g, pt}
	}
	rows.Close()

	ws := collect(t, s, db, from)
	checkWindows(t, ws)
	reg := newRegistry(t, tables)
	got := map[int32]map[string]any{}
	var announced []uint16
	for _, w := range ws {
		for i := range w.Events {
			e := &w.Events[i]
			reg.observe(w, e)
			if e.Kind == event.KindSchemaChange {
				announced = append(announced, e.SchemaVersion)
				continue
			}
			row, _ := reg.decode(e)
			k, _ := event.KeyInt(e.Key)
			got[int32(k)] = row
		}
	}
	// The catalog read at Open and the binlog's table map describe the
	// same definition: one version, announced once.
	if len(tables) != 1 || len(announced) != 1 || announced[0] != tables[0].Version {
		t.Fatalf("Open gave %+v; the log announced versions %v", tables, announced)
	}

	rat := func(s string) *big.Rat { r, _ := new(big.Rat).SetString(s); return r }
	day := func(s string) time.Time { d, _ := time.Parse("2006-01-02", s); return d }
	micros := func(s string) int64 {
		d, err := time.Parse("2006-01-02 15:04:05.999999", s)
		if err != nil {
			t.Fatal(err)
		}
		return d.UnixMicro()
	}
	// local-timestamp-micros decodes as a time.Time in UTC holding the wall
	// clock reading.
	local := func(s string) time.Time { return time.UnixMicro(micros(s)).UTC() }
	const hms = (838*3600 + 59*60 + 59) * int64(time.Second/time.Microsecond)
	want := map[int32]map[string]any{
		1: {
			"id": 1, "ti": 127, "tiu": 255, "si": 32767, "siu": 65535, "mi": 8388607, "miu": 16777215,
			"i": 2147483647, "iu": int64(4294967295), "bi": int64(math.MaxInt64), "biu": new(big.Rat).SetUint64(math.MaxUint64),
			"d": rat(nines), "d2": rat("99999999.99"),
			"f": float32(float64(3.40282e38)), "dbl": 1.7976931348623157e308,
			"b1": []byte{1}, "b64": bytes.Repeat([]byte{0xFF}, 8),
			"dt": day("9999-12-31"), "tm": hms, "tm0": -hms, "dtm": local("9999-12-31 23:59:59.999999"),
			"ts": time.UnixMicro(micros("2038-01-19 03:14:07.999999")).UTC(), "y": 2155,
			"c": "abc", "vc": "🚀 utf8mb4 ✓", "tx": "text", "lat": "é€",
			"bin": []byte("ab\x00\x00"), "vb": []byte{0, 0xFF, 0}, "bl": []byte{0xDE, 0xAD, 0xBE, 0xEF}, "mbl": big16,
			"j": `{"k": [1, 2.5, "s"]}`, "e": "it's", "st": []any{"x", "z"},
			"g": geo[1][0], "pt": geo[1][1], "nn": local("2000-01-01 00:00:00"),
		},
		2: {
			"id": 2, "ti": -128, "tiu": 0, "si": -32768, "siu": 0, "mi": -8388608, "miu": 0,
			"i": -2147483648, "iu": int64(0), "bi": int64(math.MinInt64), "biu": new(big.Rat),
			"d": rat("-" + nines), "d2": rat("-99999999.99"),
			"f": float32(-1.5), "dbl": -2.2250738585072014e-308,
			"b1": []byte{0}, "b64": make([]byte, 8),
			"dt": day("1000-01-01"), "tm": -hms, "tm0": int64(0), "dtm": local("1000-01-01 00:00:00"),
			"ts": time.Unix(1, 0).UTC(), "y": 1901,
			"c": "", "vc": "", "tx": "", "lat": "",
			"bin": make([]byte, 4), "vb": []byte{}, "bl": []byte{}, "mbl": []byte{},
			"j": "[]", "e": "a", "st": []any{},
			"g": geo[2][0], "pt": geo[2][1], "nn": local("2000-01-01 00:00:00"),
		},
		3: {"id": 3, "nn": local("2000-01-01 00:00:00")},
		4: {"id": 4, "tm": int64(-500000)},
	}
	for _, c := range tables[0].Columns {
		f := schema.FieldName(c.Name)
		for id := int32(3); id <= 4; id++ {
			if _, ok := want[id][f]; !ok {
				want[id][f] = nil // every other column is NULL, or a zero date
			}
		}
	}
	if diff := cmp.Diff(want, got, ratEqual); diff != "" {
		if len(diff) > 4000 {
			diff = diff[:4000]
		}
		t.Fatalf("decoded rows differ (-want +got):\n%s", diff)
	}
}

// TestKeyEncoding checks the key of a composite primary key over the type
// families: integers, strings, binary, and canonical strings for the rest.
func TestKeyEncoding(t *testing.T) {
	srv := dbtest.SharedMariaDB(t)
	dropDatabases(t, srv, "keys1")
	srv.Exec(t, "CREATE DATABASE keys1", `CREATE TABLE keys1.k (
		u BIGINT UNSIGNED, i SMALLINT, s VARCHAR(10), b VARBINARY(4), bn BINARY(3), d DECIMAL(5,2), dt DATETIME(3), e ENUM('a','b'),
		PRIMARY KEY (u, i, s, b, bn, d, dt, e)) CHARACTER SET utf8mb4`,
		`CREATE TABLE keys1.nopk (a INT, b VARCHAR(5))`)
	db := srv.DB(t, "keys1")
	s, _ := openSource(t, testConfig(t, srv, "keys1"))
	from := binlogEnd(t, db)
	srv.Exec(t, "INSERT INTO keys1.k VALUES (18446744073709551615, -3, 'é', x'0001', 'z', 1.5, '2024-01-02 03:04:05.678', 'b')",
		"INSERT INTO keys1.nopk VALUES (1, 'x'), (NULL, 'y')",
		"UPDATE keys1.nopk SET b = 'z' WHERE a = 1")
	ws := collect(t, s, db, from)
	var keys [][]any
	var ops []event.Op
	for _, w := range ws {
		for _, e := range w.Events {
			if e.Kind != event.KindData {
				continue
			}
			k, err := event.DecodeKey(e.Key)
			if err != nil {
				t.Fatal(err)
			}
			keys = append(keys, k)
			ops = append(ops, e.Op)
		}
	}
	want := [][]any{
		{uint64(math.MaxUint64), int64(-3), "é", []byte{0, 1}, []byte("z\x00\x00"), "1.50", "2024-01-02 03:04:05.678", "b"},
		// A table without a primary key: the whole row is the key, so an
		// update is a delete and an insert.
		{int64(1), "x"}, {nil, "y"}, {int64(1), "x"}, {int64(1), "z"},
	}
	if diff := cmp.Diff(want, keys); diff != "" {
		t.Fatalf("keys (-want +got):\n%s", diff)
	}
	wantOps := []event.Op{event.OpInsert, event.OpInsert, event.OpInsert, event.OpDelete, event.OpInsert}
	if diff := cmp.Diff(wantOps, ops); diff != "" {
		t.Fatalf("ops (-want +got):\n%s", diff)
	}
}

// TestCatalogMatchesLog: for many column types, the definition Open reads
// from information_schema is the one the table map carries (same version).
func TestCatalogMatchesLog(t *testing.T) {
	srv := dbtest.SharedMariaDB(t)
	defs := []string{
		"a INT NOT NULL, b INT NOT NULL, c INT, v INT AS (a+b) VIRTUAL, UNIQUE KEY (b, a)", // promoted unique key
		"id INT UNSIGNED PRIMARY KEY, u UUID, i6 INET6, i4 INET4",
		"id INT PRIMARY KEY, c CHAR(200) CHARACTER SET utf8mb4, v VARCHAR(300) CHARACTER SET utf8mb3, l LONGBLOB, tt TINYTEXT CHARACTER SET ascii",
		"id INT PRIMARY KEY, e ENUM('x''y', 'a\\\\b', ''), s SET('p', 'q') NOT NULL, dd DECIMAL(1,0) UNSIGNED, fl FLOAT(7,3), dbl2 DOUBLE PRECISION",
		"id INT PRIMARY KEY, ls LINESTRING, poly POLYGON, mp MULTIPOINT, gc GEOMETRYCOLLECTION, t3 TIME(3), ts0 TIMESTAMP NULL, yr YEAR NOT NULL",
		"k1 VARCHAR(5), k2 DATE, v TEXT, PRIMARY KEY (k2, k1)",
		"x INT, y BLOB",
		"id INT PRIMARY KEY, u VARCHAR(10) CHARACTER SET utf8mb4 COLLATE utf8mb4_uca1400_ai_ci, l CHAR(3) CHARACTER SET latin1 COLLATE latin1_bin",
	}
	dropDatabases(t, srv, "cat")
	srv.Exec(t, "CREATE DATABASE cat CHARACTER SET utf8mb4")
	var names []string
	for i, d := range defs {
		name := "t" + string(rune('0'+i))
		names = append(names, "cat."+name)
		srv.Exec(t, "CREATE TABLE cat."+name+" ("+d+")")
	}
	db := srv.DB(t, "cat")
	s, tables := openSource(t, testConfig(t, srv, "cat"))
	from := binlogEnd(t, db)
	for _, n := range names {
		srv.Exec(t, "SET SESSION sql_mode = ''", "INSERT INTO "+n+" () VALUES ()")
	}
	ws := collect(t, s, db, from)
	byName := map[string]schema.Table{}
	for _, tb := range tables {
		byName[tb.Name] = tb
	}
	seen := 0
	for _, w := range ws {
		for _, e := range w.Events {
			if e.Kind != event.KindSchemaChange {
				continue
			}
			sc, err := e.SchemaChange()
			if err != nil {
				t.Fatal(err)
			}
			seen++
			if open := byName[sc.Name]; open.Version != sc.Version || open.ID != sc.Source {
				t.Errorf("%s: Open says id %d version %d, the log %d/%d\nOpen: %s\nlog:  %s",
					sc.Name, open.ID, open.Version, sc.Source, sc.Version, open.AvroSchema(), sc.Avro)
			}
			if strings.Contains(string(sc.Avro), "unknown") {
				t.Errorf("%s: %s", sc.Name, sc.Avro)
			}
		}
	}
	if seen != len(defs) {
		t.Fatalf("%d schema changes, want %d", seen, len(defs))
	}
}

// TestLargeBlob: a MEDIUMBLOB of its largest size (16 MiB - 1) travels
// whole. The payload is compared with its Avro encoding built by hand,
// because schema.Codec decodes values up to 1 MiB only.
func TestLargeBlob(t *testing.T) {
	srv := dbtest.SharedMariaDB(t)
	dropDatabases(t, srv, "lob")
	srv.Exec(t, "CREATE DATABASE lob", "CREATE TABLE lob.t (id INT PRIMARY KEY, b MEDIUMBLOB)")
	db := srv.DB(t, "lob")
	s, _ := openSource(t, testConfig(t, srv, "lob"))
	from := binlogEnd(t, db)
	blob := bytes.Repeat([]byte("0123456789abcdef"), 1<<20)[:16<<20-1]
	if _, err := db.Exec("INSERT INTO t VALUES (7, ?)", blob); err != nil {
		t.Fatal(err)
	}
	ws := collect(t, s, db, from)
	want := schema.AppendLong(nil, 7)
	want = append(want, 2) // union branch 1: bytes
	want = schema.AppendBytes(want, blob)
	n := 0
	for _, w := range ws {
		for _, e := range w.Events {
			if e.Kind == event.KindData {
				n++
				if !bytes.Equal(e.Payload, want) {
					t.Fatalf("payload of %d bytes differs from the expected %d bytes", len(e.Payload), len(want))
				}
			}
		}
	}
	if n != 1 {
		t.Fatalf("%d data events, want 1", n)
	}
}
