package mysql

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
)

// kind is a column's type family; with the other colDef fields it fixes the
// column's Avro type and how its binlog values are converted.
type kind uint8

const (
	kInt       kind = iota + 1 // TINYINT..BIGINT; size = bytes (1, 2, 3, 4, 8)
	kDecimal                   // DECIMAL(prec, scale)
	kFloat                     // FLOAT
	kDouble                    // DOUBLE
	kBit                       // BIT(size bits)
	kYear                      // YEAR
	kDate                      // DATE
	kTime                      // TIME(scale)
	kDatetime                  // DATETIME(scale)
	kTimestamp                 // TIMESTAMP(scale)
	kString                    // CHAR/VARCHAR/TEXT, BINARY/VARBINARY/BLOB (by str and charset)
	kEnum                      // ENUM(values)
	kSet                       // SET(values)
	kJSON                      // MySQL's binary JSON
	kGeometry                  // GEOMETRY and its subtypes (geom)
)

// strForm is the storage form of a kString column.
type strForm uint8

const (
	strChar    strForm = iota + 1 // CHAR/BINARY: size = max bytes
	strVarchar                    // VARCHAR/VARBINARY: size = max bytes
	strBlob                       // TEXT/BLOB: size = length-prefix bytes (1 tiny .. 4 long)
)

// colDef is one column as the adapter understands it, built either from a
// table-map event or from information_schema; both must build equal colDefs
// for equal definitions, because the schema version is derived from them.
type colDef struct {
	name     string
	kind     kind
	size     int
	unsigned bool
	nullable bool
	prec     int // DECIMAL precision
	scale    int // DECIMAL scale; fractional-second digits of TIME/DATETIME/TIMESTAMP
	str      strForm
	cs       charset
	values   []string // ENUM/SET labels, in definition order
	geom     int      // geometry type code (0 geometry, 1 point, ...)
	// cat holds what only the catalog knows; it is zero in a colDef built
	// from a table map, and no part of the definition's identity.
	cat catalogFacts
}

// catalogFacts are information_schema facts about a column that the table
// map does not carry: what the ChunkReader needs to read the column with
// SELECT and to order by it.
type catalogFacts struct {
	dataType  string // DATA_TYPE, lower case ("uuid" where the table map says binary(16))
	collation string // COLLATION_NAME, "" for non-text columns
	extra     string // EXTRA, lower case ("virtual generated", ...)
}

var geometryNames = []string{"geometry", "point", "linestring", "polygon", "multipoint", "multilinestring", "multipolygon", "geometrycollection"}

var intNames = map[int]string{1: "tinyint", 2: "smallint", 3: "mediumint", 4: "int", 8: "bigint"}

// sourceType renders the column type for people; it is part of the schema
// version's identity, so it names everything that changes decoding.
func (c *colDef) sourceType() string {
	withFsp := func(s string) string {
		if c.scale > 0 {
			return s + "(" + strconv.Itoa(c.scale) + ")"
		}
		return s
	}
	switch c.kind {
	case kInt:
		if c.unsigned {
			return intNames[c.size] + " unsigned"
		}
		return intNames[c.size]
	case kDecimal:
		return fmt.Sprintf("decimal(%d,%d)", c.prec, c.scale)
	case kFloat:
		return "float"
	case kDouble:
		return "double"
	case kBit:
		return fmt.Sprintf("bit(%d)", c.size)
	case kYear:
		return "year"
	case kDate:
		return "date"
	case kTime:
		return withFsp("time")
	case kDatetime:
		return withFsp("datetime")
	case kTimestamp:
		return withFsp("timestamp")
	case kString:
		blob := [5]string{"", "tiny", "", "medium", "long"}
		if c.cs.name == "binary" {
			switch c.str {
			case strChar:
				return fmt.Sprintf("binary(%d)", c.size)
			case strVarchar:
				return fmt.Sprintf("varbinary(%d)", c.size)
			default:
				return blob[c.size] + "blob"
			}
		}
		switch c.str {
		case strChar:
			return fmt.Sprintf("char(%d) %s", c.size/c.cs.maxLen, c.cs.name)
		case strVarchar:
			return fmt.Sprintf("varchar(%d) %s", c.size/c.cs.maxLen, c.cs.name)
		default:
			return blob[c.size] + "text " + c.cs.name
		}
	case kEnum, kSet:
		var b strings.Builder
		if c.kind == kEnum {
			b.WriteString("enum(")
		} else {
			b.WriteString("set(")
		}
		for i, v := range c.values {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString("'" + strings.ReplaceAll(v, "'", "''") + "'")
		}
		b.WriteByte(')')
		return b.String()
	case kJSON:
		return "json"
	case kGeometry:
		if c.geom >= 0 && c.geom < len(geometryNames) {
			return geometryNames[c.geom]
		}
		return "geometry"
	}
	return "unknown"
}

// isText reports whether a kString column is converted to an Avro string.
func (c *colDef) isText() bool { return c.kind == kString && c.cs.convert != convNone }

// avroType is the column's Avro type without nullability.
func (c *colDef) avroType() json.RawMessage {
	switch c.kind {
	case kInt:
		switch {
		case c.size < 4 || (c.size == 4 && !c.unsigned):
			return schema.Primitive("int")
		case c.size == 8 && c.unsigned:
			return json.RawMessage(`{"type":"bytes","logicalType":"decimal","precision":20,"scale":0}`)
		}
		return schema.Primitive("long")
	case kDecimal:
		return json.RawMessage(fmt.Sprintf(`{"type":"bytes","logicalType":"decimal","precision":%d,"scale":%d}`, max(c.prec, 1), c.scale))
	case kFloat:
		return schema.Primitive("float")
	case kDouble:
		return schema.Primitive("double")
	case kBit, kGeometry:
		return schema.Primitive("bytes")
	case kYear:
		return schema.Primitive("int")
	case kDate:
		return json.RawMessage(`{"type":"int","logicalType":"date"}`)
	case kTime:
		return schema.Primitive("long")
	case kDatetime:
		return json.RawMessage(`{"type":"long","logicalType":"local-timestamp-micros"}`)
	case kTimestamp:
		return json.RawMessage(`{"type":"long","logicalType":"timestamp-micros"}`)
	case kString:
		if c.isText() {
			return schema.Primitive("string")
		}
		return schema.Primitive("bytes")
	case kEnum, kJSON:
		return schema.Primitive("string")
	case kSet:
		return json.RawMessage(`{"type":"array","items":"string"}`)
	}
	return schema.Primitive("bytes")
}

// avroNullable: DATE, DATETIME and TIMESTAMP are nullable in Avro even when
// NOT NULL in the table, because zero and partial dates ('0000-00-00',
// '2024-00-15') have no Avro value and are sent as null.
func (c *colDef) avroNullable() bool {
	return c.nullable || c.kind == kDate || c.kind == kDatetime || c.kind == kTimestamp
}

func (c *colDef) column() schema.Column {
	return schema.Column{Name: c.name, Avro: c.avroType(), Nullable: c.avroNullable(), SourceType: c.sourceType()}
}

// tableDef is one definition of a table: its columns and key.
type tableDef struct {
	db, table string
	cols      []colDef
	// key holds the indexes of the key columns in key order. Invariant:
	// non-empty; a table without a primary key uses every column.
	key []int
	// keyIndex is the name of the index whose columns are key, when read
	// from the catalog; "" when the key is the whole row (no primary key
	// nor promoted unique key) or the definition comes from a table map.
	keyIndex string
}

func (d *tableDef) name() string { return d.db + "." + d.table }

// schemaTable is the definition as a schema.Table without id and version.
func (d *tableDef) schemaTable() schema.Table {
	t := schema.Table{Name: d.name(), Columns: make([]schema.Column, len(d.cols)), Key: make([]string, len(d.key))}
	for i := range d.cols {
		t.Columns[i] = d.cols[i].column()
	}
	for i, k := range d.key {
		t.Key[i] = d.cols[k].name
	}
	return t
}

// tableDefFromMap builds the definition a table-map event carries. It needs
// binlog_row_metadata=FULL: without column names it refuses.
func tableDefFromMap(tm tableMap, colls collationSet, flavor string) (*tableDef, error) {
	n := int(tm.ColumnCount)
	names := tm.ColumnNameString()
	if len(names) != n {
		return nil, &SettingError{Flavor: flavorName(flavor), Setting: "binlog_row_metadata", Value: "MINIMAL (the table map of " +
			string(tm.Schema) + "." + string(tm.Table) + " has no column names)", Want: "FULL",
			Why: "so the binlog carries column names; events written before the change cannot be decoded and must be skipped by starting after them"}
	}
	d := &tableDef{db: string(tm.Schema), table: string(tm.Table), cols: make([]colDef, n)}
	unsigned := tm.UnsignedMap()
	colls1 := tm.CollationMap()
	enums := tm.EnumStrValueMap()
	sets := tm.SetStrValueMap()
	geoms := tm.GeometryTypeMap()
	for i := 0; i < n; i++ {
		c := &d.cols[i]
		c.name = names[i]
		_, c.nullable = tm.Nullable(i)
		meta := tm.ColumnMeta[i]
		typ := tm.ColumnType[i]
		if typ == gomysql.MYSQL_TYPE_STRING && meta >= 256 {
			// CHAR, ENUM and SET share a wire type: the real type and a
			// 10-bit length hide in the metadata.
			b0, b1 := byte(meta>>8), int(meta&0xFF)
			if b0&0x30 != 0x30 {
				c.size = b1 | int((b0&0x30)^0x30)<<4
				typ = b0 | 0x30
			} else {
				c.size = b1
				typ = b0
			}
		} else if typ == gomysql.MYSQL_TYPE_STRING {
			c.size = int(meta)
		}
		switch typ {
		case gomysql.MYSQL_TYPE_TINY, gomysql.MYSQL_TYPE_SHORT, gomysql.MYSQL_TYPE_INT24, gomysql.MYSQL_TYPE_LONG, gomysql.MYSQL_TYPE_LONGLONG:
			c.kind = kInt
			c.size = map[byte]int{gomysql.MYSQL_TYPE_TINY: 1, gomysql.MYSQL_TYPE_SHORT: 2, gomysql.MYSQL_TYPE_INT24: 3, gomysql.MYSQL_TYPE_LONG: 4, gomysql.MYSQL_TYPE_LONGLONG: 8}[typ]
			c.unsigned = unsigned[i]
		case gomysql.MYSQL_TYPE_NEWDECIMAL:
			c.kind, c.prec, c.scale = kDecimal, int(meta>>8), int(meta&0xFF)
		case gomysql.MYSQL_TYPE_FLOAT:
			c.kind = kFloat
		case gomysql.MYSQL_TYPE_DOUBLE:
			c.kind = kDouble
		case gomysql.MYSQL_TYPE_BIT:
			c.kind, c.size = kBit, int(meta>>8)*8+int(meta&0xFF)
		case gomysql.MYSQL_TYPE_YEAR:
			c.kind = kYear
		case gomysql.MYSQL_TYPE_DATE, gomysql.MYSQL_TYPE_NEWDATE:
			c.kind = kDate
		case gomysql.MYSQL_TYPE_TIME:
			c.kind = kTime
		case gomysql.MYSQL_TYPE_TIME2:
			c.kind, c.scale = kTime, int(meta)
		case gomysql.MYSQL_TYPE_DATETIME:
			c.kind = kDatetime
		case gomysql.MYSQL_TYPE_DATETIME2:
			c.kind, c.scale = kDatetime, int(meta)
		case gomysql.MYSQL_TYPE_TIMESTAMP:
			c.kind = kTimestamp
		case gomysql.MYSQL_TYPE_TIMESTAMP2:
			c.kind, c.scale = kTimestamp, int(meta)
		case gomysql.MYSQL_TYPE_VARCHAR, gomysql.MYSQL_TYPE_VAR_STRING:
			c.kind, c.str, c.size, c.cs = kString, strVarchar, int(meta), colls.lookup(colls1[i])
		case gomysql.MYSQL_TYPE_STRING:
			c.kind, c.str, c.cs = kString, strChar, colls.lookup(colls1[i])
		case gomysql.MYSQL_TYPE_BLOB:
			c.kind, c.str, c.size, c.cs = kString, strBlob, int(meta), colls.lookup(colls1[i])
		case gomysql.MYSQL_TYPE_VECTOR:
			c.kind, c.str, c.size, c.cs = kString, strBlob, 4, binaryCharset
		case gomysql.MYSQL_TYPE_ENUM:
			c.kind, c.values = kEnum, enums[i]
		case gomysql.MYSQL_TYPE_SET:
			c.kind, c.values = kSet, sets[i]
		case gomysql.MYSQL_TYPE_JSON:
			c.kind = kJSON
		case gomysql.MYSQL_TYPE_GEOMETRY:
			c.kind, c.geom = kGeometry, int(geoms[i])
		default:
			return nil, fmt.Errorf("%w: column %s of %s has binlog type %d, which the adapter does not support", ErrDecode, c.name, d.name(), typ)
		}
		if c.kind == kString && c.cs.name == "binary" {
			c.cs = binaryCharset
		}
		if (c.kind == kEnum || c.kind == kSet) && c.values == nil {
			return nil, fmt.Errorf("%w: the table map of %s carries no labels for %s column %s (binlog_row_metadata must be FULL)", ErrDecode, d.name(), c.sourceType(), c.name)
		}
	}
	for _, k := range tm.PrimaryKey {
		if int(k) >= n {
			return nil, fmt.Errorf("%w: the table map of %s names key column %d of %d", ErrDecode, d.name(), k, n)
		}
		d.key = append(d.key, int(k))
	}
	d.fillKey()
	return d, nil
}

// fillKey applies the rule for tables without a primary key: the key is
// the whole row, every column in order.
func (d *tableDef) fillKey() {
	if len(d.key) == 0 {
		d.key = make([]int, len(d.cols))
		for i := range d.key {
			d.key[i] = i
		}
	}
}

func flavorName(f string) string {
	if f == FlavorMySQL {
		return "MySQL"
	}
	return "MariaDB"
}

// catalogColumn is one row of information_schema.COLUMNS.
type catalogColumn struct {
	name, dataType, columnType string
	nullable                   bool
	charset                    string // "" when NULL
	octets                     int64
	prec, scale, fsp           int64
}

// colDefFromCatalog builds the colDef information_schema describes; it
// must equal the one tableDefFromMap builds for the same column.
func colDefFromCatalog(cc catalogColumn, charsets map[string]int) (colDef, error) {
	c := colDef{name: cc.name, nullable: cc.nullable}
	cs := func() charset {
		if cc.charset == "" || cc.charset == "binary" {
			return binaryCharset
		}
		return charsetByName(cc.charset, charsets[cc.charset])
	}
	blobSize := map[string]int{"tiny": 1, "": 2, "medium": 3, "long": 4}
	ct := strings.ToLower(cc.columnType)
	switch dt := strings.ToLower(cc.dataType); dt {
	case "tinyint", "smallint", "mediumint", "int", "integer", "bigint":
		c.kind = kInt
		c.size = map[string]int{"tinyint": 1, "smallint": 2, "mediumint": 3, "int": 4, "integer": 4, "bigint": 8}[dt]
		c.unsigned = strings.Contains(ct, "unsigned")
	case "decimal", "numeric":
		c.kind, c.prec, c.scale = kDecimal, int(cc.prec), int(cc.scale)
	case "float":
		c.kind = kFloat
	case "double", "real", "double precision":
		c.kind = kDouble
	case "bit":
		c.kind, c.size = kBit, int(cc.prec)
	case "year":
		c.kind = kYear
	case "date":
		c.kind = kDate
	case "time":
		c.kind, c.scale = kTime, int(cc.fsp)
	case "datetime":
		c.kind, c.scale = kDatetime, int(cc.fsp)
	case "timestamp":
		c.kind, c.scale = kTimestamp, int(cc.fsp)
	case "char", "varchar", "binary", "varbinary":
		c.kind, c.size, c.cs = kString, int(cc.octets), cs()
		c.str = strChar
		if strings.HasPrefix(dt, "var") {
			c.str = strVarchar
		}
	case "tinytext", "text", "mediumtext", "longtext":
		c.kind, c.str, c.size, c.cs = kString, strBlob, blobSize[strings.TrimSuffix(dt, "text")], cs()
	case "tinyblob", "blob", "mediumblob", "longblob":
		c.kind, c.str, c.size, c.cs = kString, strBlob, blobSize[strings.TrimSuffix(dt, "blob")], binaryCharset
	case "uuid", "inet6":
		c.kind, c.str, c.size, c.cs = kString, strChar, 16, binaryCharset
	case "inet4":
		c.kind, c.str, c.size, c.cs = kString, strChar, 4, binaryCharset
	case "vector":
		c.kind, c.str, c.size, c.cs = kString, strBlob, 4, binaryCharset
	case "enum", "set":
		c.kind = kEnum
		if dt == "set" {
			c.kind = kSet
		}
		vals, err := parseLabels(cc.columnType)
		if err != nil {
			return c, err
		}
		c.values = vals
	case "json":
		c.kind = kJSON
	case "geomcollection":
		c.kind, c.geom = kGeometry, 7
	default:
		for i, g := range geometryNames {
			if dt == g {
				c.kind, c.geom = kGeometry, i
				return c, nil
			}
		}
		return c, fmt.Errorf("databus: mysql: column %s has type %s, which the adapter does not support", cc.name, cc.columnType)
	}
	return c, nil
}

// parseLabels reads the labels of an enum or set column type, for example
// enum('a','b'): inside the quotes, a doubled quote stands for one quote, and
// the server escapes a backslash with a backslash.
func parseLabels(columnType string) ([]string, error) {
	open := strings.IndexByte(columnType, '(')
	if open < 0 {
		return nil, fmt.Errorf("databus: mysql: cannot read the labels of %q", columnType)
	}
	s := columnType[open+1:]
	var out []string
	for {
		if len(s) == 0 || s[0] != '\'' {
			return nil, fmt.Errorf("databus: mysql: cannot read the labels of %q", columnType)
		}
		s = s[1:]
		var b strings.Builder
		for {
			if len(s) == 0 {
				return nil, fmt.Errorf("databus: mysql: unterminated label in %q", columnType)
			}
			ch := s[0]
			if ch == '\'' {
				if len(s) > 1 && s[1] == '\'' {
					b.WriteByte('\'')
					s = s[2:]
					continue
				}
				s = s[1:]
				break
			}
			if ch == '\\' && len(s) > 1 {
				b.WriteByte(s[1])
				s = s[2:]
				continue
			}
			b.WriteByte(ch)
			s = s[1:]
		}
		out = append(out, b.String())
		if len(s) > 0 && s[0] == ',' {
			s = s[1:]
			continue
		}
		return out, nil
	}
}

// ---- values ----

// appendLenPrefixed appends a length-prefixed value that fn writes, for
// values whose length is only known once converted (latin1 text).
func appendLenPrefixed(dst []byte, fn func([]byte) []byte) []byte {
	start := len(dst)
	dst = fn(dst)
	n := len(dst) - start
	var pre [binary.MaxVarintLen64]byte
	p := schema.AppendLong(pre[:0], int64(n))
	dst = append(dst, p...)                      // grow by the prefix length
	copy(dst[start+len(p):], dst[start:start+n]) // shift the value right
	copy(dst[start:], p)
	return dst
}

// toInt64 and toUint64 read the integer types go-mysql decodes into.
func toInt64(v any) (int64, bool) {
	switch x := v.(type) {
	case int8:
		return int64(x), true
	case int16:
		return int64(x), true
	case int32:
		return int64(x), true
	case int64:
		return x, true
	case int:
		return int64(x), true
	case uint8:
		return int64(x), true
	case uint16:
		return int64(x), true
	case uint32:
		return int64(x), true
	case uint64:
		return int64(x), true
	}
	return 0, false
}

func toUint64(v any) (uint64, bool) {
	switch x := v.(type) {
	case uint8:
		return uint64(x), true
	case uint16:
		return uint64(x), true
	case uint32:
		return uint64(x), true
	case uint64:
		return x, true
	}
	i, ok := toInt64(v)
	return uint64(i), ok
}

// rawBytes returns the bytes of a string or []byte value without copying.
func rawBytes(v any) ([]byte, bool) {
	switch x := v.(type) {
	case []byte:
		return x, true
	case string:
		return []byte(x), true
	}
	return nil, false
}

func badValue(c *colDef, v any) error {
	return fmt.Errorf("%w: column %s (%s): unexpected value %T", ErrDecode, c.name, c.sourceType(), v)
}

// appendValue appends the Avro encoding of v, a value of column c as
// go-mysql decoded it, including the union branch of a nullable column.
func (c *colDef) appendValue(dst []byte, v any) ([]byte, error) {
	nullable := c.avroNullable()
	if v == nil {
		if !nullable {
			return nil, fmt.Errorf("%w: column %s is NOT NULL but the row holds NULL", ErrDecode, c.name)
		}
		return append(dst, 0), nil
	}
	mark := len(dst)
	if nullable {
		dst = append(dst, 2) // union branch 1, zig-zag encoded
	}
	switch c.kind {
	case kInt:
		if c.size == 8 && c.unsigned {
			u, ok := toUint64(v)
			if !ok {
				return nil, badValue(c, v)
			}
			var b [9]byte
			binary.BigEndian.PutUint64(b[1:], u)
			return schema.AppendBytes(dst, trimTwos(b[:])), nil
		}
		i, ok := toInt64(v)
		if !ok {
			return nil, badValue(c, v)
		}
		return schema.AppendLong(dst, i), nil
	case kYear:
		i, ok := toInt64(v)
		if !ok {
			return nil, badValue(c, v)
		}
		return schema.AppendLong(dst, i), nil
	case kDecimal:
		s, ok := v.(string)
		if !ok {
			return nil, badValue(c, v)
		}
		out, err := appendDecimal(dst, s, c.scale)
		if err != nil {
			return nil, fmt.Errorf("%w: column %s: %v", ErrDecode, c.name, err)
		}
		return out, nil
	case kFloat:
		f, ok := v.(float32)
		if !ok {
			return nil, badValue(c, v)
		}
		return binary.LittleEndian.AppendUint32(dst, math.Float32bits(f)), nil
	case kDouble:
		f, ok := v.(float64)
		if !ok {
			return nil, badValue(c, v)
		}
		return binary.LittleEndian.AppendUint64(dst, math.Float64bits(f)), nil
	case kBit:
		i, ok := toInt64(v)
		if !ok {
			return nil, badValue(c, v)
		}
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(i))
		return schema.AppendBytes(dst, b[8-(c.size+7)/8:]), nil
	case kDate, kDatetime, kTimestamp:
		s, ok := v.(string)
		if !ok {
			return nil, badValue(c, v)
		}
		var n int64
		if c.kind == kDate {
			n, ok = parseDate(s)
		} else {
			n, ok = parseDatetime(s)
		}
		if !ok {
			return append(dst[:mark], 0), nil // zero or partial date: null
		}
		return schema.AppendLong(dst, n), nil
	case kTime:
		s, ok := v.(string)
		if !ok {
			return nil, badValue(c, v)
		}
		n, ok := parseTime(s)
		if !ok {
			return nil, fmt.Errorf("%w: column %s: bad TIME %q", ErrDecode, c.name, s)
		}
		return schema.AppendLong(dst, n), nil
	case kString:
		b, ok := rawBytes(v)
		if !ok {
			return nil, badValue(c, v)
		}
		switch c.cs.convert {
		case convLatin1:
			return appendLenPrefixed(dst, func(d []byte) []byte { return appendLatin1(d, b) }), nil
		case convNone:
			if c.str == strChar && c.cs.name == "binary" && len(b) < c.size {
				// The binlog drops BINARY(n)'s trailing zero bytes; the
				// column value has them.
				dst = schema.AppendLong(dst, int64(c.size))
				dst = append(dst, b...)
				for i := len(b); i < c.size; i++ {
					dst = append(dst, 0)
				}
				return dst, nil
			}
		}
		return schema.AppendBytes(dst, b), nil
	case kJSON:
		b, ok := rawBytes(v)
		if !ok {
			return nil, badValue(c, v)
		}
		return schema.AppendBytes(dst, b), nil
	case kGeometry:
		b, ok := rawBytes(v)
		if !ok {
			return nil, badValue(c, v)
		}
		return schema.AppendBytes(dst, b), nil
	case kEnum:
		i, ok := toInt64(v)
		if !ok {
			return nil, badValue(c, v)
		}
		return schema.AppendBytes(dst, c.enumLabel(i)), nil
	case kSet:
		u, ok := toUint64(v)
		if !ok {
			return nil, badValue(c, v)
		}
		if u == 0 {
			return append(dst, 0), nil
		}
		dst = schema.AppendLong(dst, int64(popcount(u, len(c.values))))
		for i, l := range c.values {
			if u&(1<<uint(i)) != 0 {
				dst = schema.AppendBytes(dst, l)
			}
		}
		return append(dst, 0), nil
	}
	return nil, badValue(c, v)
}

func popcount(u uint64, n int) int {
	k := 0
	for i := 0; i < n && i < 64; i++ {
		if u&(1<<uint(i)) != 0 {
			k++
		}
	}
	return k
}

// enumLabel: index 0 is MySQL's "invalid value" marker, the empty string.
func (c *colDef) enumLabel(i int64) string {
	if i <= 0 || int(i) > len(c.values) {
		return ""
	}
	return c.values[i-1]
}

// appendKey appends the key component of v (see the package doc).
func (c *colDef) appendKey(dst []byte, v any) ([]byte, error) {
	if v == nil {
		return event.AppendKeyNull(dst), nil
	}
	switch c.kind {
	case kInt:
		if c.unsigned {
			u, ok := toUint64(v)
			if !ok {
				return nil, badValue(c, v)
			}
			return event.AppendKeyUint(dst, u), nil
		}
		i, ok := toInt64(v)
		if !ok {
			return nil, badValue(c, v)
		}
		return event.AppendKeyInt(dst, i), nil
	case kYear:
		i, ok := toInt64(v)
		if !ok {
			return nil, badValue(c, v)
		}
		return event.AppendKeyInt(dst, i), nil
	case kFloat:
		f, ok := v.(float32)
		if !ok {
			return nil, badValue(c, v)
		}
		return event.AppendKeyString(dst, strconv.FormatFloat(float64(f), 'g', -1, 32)), nil
	case kDouble:
		f, ok := v.(float64)
		if !ok {
			return nil, badValue(c, v)
		}
		return event.AppendKeyString(dst, strconv.FormatFloat(f, 'g', -1, 64)), nil
	case kBit:
		i, ok := toInt64(v)
		if !ok {
			return nil, badValue(c, v)
		}
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(i))
		return event.AppendKeyBytes(dst, b[8-(c.size+7)/8:]), nil
	case kEnum:
		i, ok := toInt64(v)
		if !ok {
			return nil, badValue(c, v)
		}
		return event.AppendKeyString(dst, c.enumLabel(i)), nil
	case kSet:
		u, ok := toUint64(v)
		if !ok {
			return nil, badValue(c, v)
		}
		var labels []string
		for i, l := range c.values {
			if u&(1<<uint(i)) != 0 {
				labels = append(labels, l)
			}
		}
		return event.AppendKeyString(dst, strings.Join(labels, ",")), nil
	case kString, kJSON, kGeometry:
		b, ok := rawBytes(v)
		if !ok {
			return nil, badValue(c, v)
		}
		if c.kind == kString && c.isText() || c.kind == kJSON {
			if c.cs.convert == convLatin1 {
				return event.AppendKeyString(dst, string(appendLatin1(nil, b))), nil
			}
			return event.AppendKeyString(dst, string(b)), nil
		}
		if c.kind == kString && c.str == strChar && len(b) < c.size {
			p := make([]byte, c.size)
			copy(p, b)
			b = p
		}
		return event.AppendKeyBytes(dst, b), nil
	default: // DECIMAL and the temporal types: their canonical string
		s, ok := v.(string)
		if !ok {
			return nil, badValue(c, v)
		}
		return event.AppendKeyString(dst, s), nil
	}
}

// trimTwos removes redundant leading sign bytes of a big-endian two's
// complement number, keeping at least one byte.
func trimTwos(b []byte) []byte {
	for len(b) > 1 && ((b[0] == 0 && b[1]&0x80 == 0) || (b[0] == 0xFF && b[1]&0x80 != 0)) {
		b = b[1:]
	}
	return b
}

// appendDecimal appends MySQL's decimal text ("-12.340", at most scale
// fractional digits) as Avro's decimal: the length-prefixed unscaled value
// in big-endian two's complement.
func appendDecimal(dst []byte, s string, scale int) ([]byte, error) {
	neg := strings.HasPrefix(s, "-")
	digits := strings.TrimPrefix(s, "-")
	intPart, frac, _ := strings.Cut(digits, ".")
	if len(frac) > scale || len(intPart)+len(frac) == 0 {
		return nil, fmt.Errorf("bad decimal %q for scale %d", s, scale)
	}
	if len(intPart)+scale <= 18 {
		// The unscaled value fits an int64: no big.Int, no allocation.
		var n int64
		for _, part := range [2]string{intPart, frac} {
			for i := 0; i < len(part); i++ {
				if part[i] < '0' || part[i] > '9' {
					return nil, fmt.Errorf("bad decimal %q", s)
				}
				n = n*10 + int64(part[i]-'0')
			}
		}
		for range scale - len(frac) {
			n *= 10
		}
		if neg {
			n = -n
		}
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(n))
		return schema.AppendBytes(dst, trimTwos(b[:])), nil
	}
	all := intPart + frac + strings.Repeat("0", scale-len(frac))
	for i := 0; i < len(all); i++ {
		if all[i] < '0' || all[i] > '9' {
			return nil, fmt.Errorf("bad decimal %q", s)
		}
	}
	var n big.Int
	n.SetString(all, 10)
	if !neg {
		b := n.Bytes()
		if len(b) == 0 || b[0]&0x80 != 0 {
			b = append([]byte{0}, b...)
		}
		return schema.AppendBytes(dst, b), nil
	}
	// -n in two's complement: invert the bits of n-1.
	n.Sub(&n, big.NewInt(1))
	b := n.Bytes()
	for i := range b {
		b[i] = ^b[i]
	}
	if len(b) == 0 || b[0]&0x80 == 0 {
		b = append([]byte{0xFF}, b...)
	}
	return schema.AppendBytes(dst, b), nil
}

// ---- temporal text ----

// num reads a run of at least minDigits digits at s[*i:].
func num(s string, i *int, minDigits int) (int64, bool) {
	start := *i
	var n int64
	for *i < len(s) && s[*i] >= '0' && s[*i] <= '9' && *i-start < 18 {
		n = n*10 + int64(s[*i]-'0')
		*i++
	}
	return n, *i-start >= minDigits
}

func lit(s string, i *int, ch byte) bool {
	if *i < len(s) && s[*i] == ch {
		*i++
		return true
	}
	return false
}

// frac reads an optional ".ffffff" into microseconds.
func frac(s string, i *int) (int64, bool) {
	if !lit(s, i, '.') {
		return 0, true
	}
	start := *i
	f, ok := num(s, i, 1)
	if !ok || *i-start > 6 {
		return 0, false
	}
	for d := *i - start; d < 6; d++ {
		f *= 10
	}
	return f, true
}

// daysFromCivil is the number of days from 1970-01-01 to y-m-d in the
// proleptic Gregorian calendar.
func daysFromCivil(y, m, d int64) int64 {
	if m <= 2 {
		y--
	}
	era := y / 400
	if y < 0 && y%400 != 0 {
		era--
	}
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}

// parseDate reads "YYYY-MM-DD" into days since the epoch; ok is false for
// zero and partial dates.
func parseDate(s string) (int64, bool) {
	i := 0
	y, ok1 := num(s, &i, 4)
	ok2 := lit(s, &i, '-')
	m, ok3 := num(s, &i, 2)
	ok4 := lit(s, &i, '-')
	d, ok5 := num(s, &i, 2)
	if !(ok1 && ok2 && ok3 && ok4 && ok5) || m < 1 || m > 12 || d < 1 || d > 31 {
		return 0, false
	}
	return daysFromCivil(y, m, d), i == len(s)
}

// parseDatetime reads "YYYY-MM-DD HH:MM:SS[.ffffff]" into microseconds
// since the epoch (the text's own clock: UTC for TIMESTAMP, which go-mysql
// formats in UTC; local wall time for DATETIME).
func parseDatetime(s string) (int64, bool) {
	if len(s) < 19 {
		return 0, false
	}
	days, ok := parseDate(s[:10])
	if !ok {
		return 0, false
	}
	i := 10
	ok1 := lit(s, &i, ' ')
	h, ok2 := num(s, &i, 2)
	ok3 := lit(s, &i, ':')
	mi, ok4 := num(s, &i, 2)
	ok5 := lit(s, &i, ':')
	sec, ok6 := num(s, &i, 2)
	f, ok7 := frac(s, &i)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7) || i != len(s) {
		return 0, false
	}
	return ((days*24+h)*60+mi)*60_000_000 + sec*1_000_000 + f, true
}

// parseTime reads "[-]HHH:MM:SS[.ffffff]" into signed microseconds.
func parseTime(s string) (int64, bool) {
	i := 0
	neg := lit(s, &i, '-')
	h, ok1 := num(s, &i, 1)
	ok2 := lit(s, &i, ':')
	m, ok3 := num(s, &i, 2)
	ok4 := lit(s, &i, ':')
	sec, ok5 := num(s, &i, 2)
	f, ok6 := frac(s, &i)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) || i != len(s) {
		return 0, false
	}
	n := ((h*60+m)*60+sec)*1_000_000 + f
	if neg {
		n = -n
	}
	return n, true
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
