package mysql

import (
	"strings"
)

// ddlKind is what a DDL statement does to a table.
type ddlKind uint8

const (
	ddlCreate ddlKind = iota + 1
	ddlAlter
	ddlRename
	ddlTruncate
	ddlDrop
)

func (k ddlKind) String() string {
	switch k {
	case ddlCreate:
		return "create"
	case ddlAlter:
		return "alter"
	case ddlRename:
		return "rename"
	case ddlTruncate:
		return "truncate"
	case ddlDrop:
		return "drop"
	}
	return "ddl"
}

// ddlOp is one table a DDL statement changes. For ddlRename, to is the new
// name. dropDB names a database dropped as a whole (db only).
type ddlOp struct {
	kind      ddlKind
	db, table string
	toDB, to  string
	dropDB    bool
}

// parseDDL recognises the statements that change a table's definition or
// empty it: CREATE TABLE, CREATE/DROP INDEX, ALTER TABLE (with RENAME TO),
// RENAME TABLE, TRUNCATE, DROP TABLE and DROP DATABASE. defaultDB is the
// statement's default database (the query event's schema). Anything else
// yields nil. It never fails: an unrecognised statement is not DDL here.
func parseDDL(defaultDB, query string) []ddlOp {
	t := &ddlTokens{toks: tokenize(query)}
	name := func() (db, table string, ok bool) {
		a, ok := t.ident()
		if !ok {
			return "", "", false
		}
		if t.peekIs(".") {
			t.next()
			b, ok := t.ident()
			if !ok {
				return "", "", false
			}
			return a, b, true
		}
		return defaultDB, a, true
	}
	switch {
	case t.word("CREATE"):
		t.word("OR")
		t.word("REPLACE")
		t.word("ONLINE")
		t.word("OFFLINE")
		if t.word("TEMPORARY") {
			return nil // temporary tables are never captured
		}
		_ = t.word("UNIQUE") || t.word("FULLTEXT") || t.word("SPATIAL")
		if t.word("INDEX") || t.word("KEY") {
			// CREATE INDEX [IF NOT EXISTS] name [USING ...] ON table
			for !t.done() && !t.isWord("ON") {
				t.next()
			}
			if !t.word("ON") {
				return nil
			}
			if db, tb, ok := name(); ok {
				return []ddlOp{{kind: ddlAlter, db: db, table: tb}}
			}
			return nil
		}
		if !t.word("TABLE") {
			return nil
		}
		t.ifNotExists()
		if db, tb, ok := name(); ok {
			return []ddlOp{{kind: ddlCreate, db: db, table: tb}}
		}
	case t.word("ALTER"):
		t.word("ONLINE")
		t.word("OFFLINE")
		t.word("IGNORE")
		if !t.word("TABLE") {
			return nil
		}
		t.ifExists()
		db, tb, ok := name()
		if !ok {
			return nil
		}
		ops := []ddlOp{{kind: ddlAlter, db: db, table: tb}}
		// ALTER TABLE ... RENAME [TO|AS] new: the table changes name (but
		// not RENAME COLUMN/INDEX/KEY).
		depth := 0
		for !t.done() {
			switch {
			case t.peekIs("("):
				depth++
				t.next()
			case t.peekIs(")"):
				depth--
				t.next()
			case depth == 0 && t.word("RENAME"):
				if t.isWord("COLUMN") || t.isWord("INDEX") || t.isWord("KEY") || t.isWord("CONSTRAINT") {
					t.next()
					continue
				}
				if !t.word("TO") {
					t.word("AS")
				}
				if ndb, ntb, ok := name(); ok {
					ops = append(ops, ddlOp{kind: ddlRename, db: db, table: tb, toDB: ndb, to: ntb})
				}
			default:
				t.next()
			}
		}
		return ops
	case t.word("RENAME"):
		if !t.word("TABLE") && !t.word("TABLES") {
			return nil
		}
		var ops []ddlOp
		for {
			t.ifExists()
			db, tb, ok := name()
			if !ok {
				return ops
			}
			t.word("WAIT")
			t.word("NOWAIT")
			if !t.word("TO") {
				return ops
			}
			ndb, ntb, ok := name()
			if !ok {
				return ops
			}
			ops = append(ops, ddlOp{kind: ddlRename, db: db, table: tb, toDB: ndb, to: ntb})
			if !t.peekIs(",") {
				return ops
			}
			t.next()
		}
	case t.word("TRUNCATE"):
		t.word("TABLE")
		if db, tb, ok := name(); ok {
			return []ddlOp{{kind: ddlTruncate, db: db, table: tb}}
		}
	case t.word("DROP"):
		switch {
		case t.word("DATABASE") || t.word("SCHEMA"):
			t.ifExists()
			if db, ok := t.ident(); ok {
				return []ddlOp{{kind: ddlDrop, db: db, dropDB: true}}
			}
			return nil
		case t.word("INDEX") || t.word("KEY"):
			t.ifExists()
			t.ident()
			if !t.word("ON") {
				return nil
			}
			if db, tb, ok := name(); ok {
				return []ddlOp{{kind: ddlAlter, db: db, table: tb}}
			}
			return nil
		}
		if t.word("TEMPORARY") {
			return nil // temporary tables are never captured
		}
		if !t.word("TABLE") && !t.word("TABLES") {
			return nil
		}
		t.ifExists()
		var ops []ddlOp
		for {
			db, tb, ok := name()
			if !ok {
				return ops
			}
			ops = append(ops, ddlOp{kind: ddlDrop, db: db, table: tb})
			if !t.peekIs(",") {
				return ops
			}
			t.next()
		}
	}
	return nil
}

// ddlTokens is a cursor over a statement's tokens.
type ddlTokens struct {
	toks []token
	i    int
}

type token struct {
	text   string
	quoted bool // a `quoted` identifier (never a keyword)
}

func (t *ddlTokens) done() bool { return t.i >= len(t.toks) }
func (t *ddlTokens) next()      { t.i++ }

func (t *ddlTokens) isWord(w string) bool {
	return !t.done() && !t.toks[t.i].quoted && strings.EqualFold(t.toks[t.i].text, w)
}

func (t *ddlTokens) word(w string) bool {
	if t.isWord(w) {
		t.i++
		return true
	}
	return false
}

func (t *ddlTokens) peekIs(p string) bool {
	return !t.done() && !t.toks[t.i].quoted && t.toks[t.i].text == p
}

func (t *ddlTokens) ifExists() {
	if t.isWord("IF") && t.i+1 < len(t.toks) && strings.EqualFold(t.toks[t.i+1].text, "EXISTS") {
		t.i += 2
	}
}

func (t *ddlTokens) ifNotExists() {
	if t.isWord("IF") && t.i+2 < len(t.toks) && strings.EqualFold(t.toks[t.i+1].text, "NOT") && strings.EqualFold(t.toks[t.i+2].text, "EXISTS") {
		t.i += 3
	}
}

// ident reads an identifier: a quoted one, or a bare word.
func (t *ddlTokens) ident() (string, bool) {
	if t.done() {
		return "", false
	}
	tk := t.toks[t.i]
	if !tk.quoted && !isWordByte(tk.text[0]) {
		return "", false
	}
	t.i++
	return tk.text, true
}

func isWordByte(c byte) bool {
	return c == '_' || c == '$' || c >= 0x80 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

// tokenize splits a statement into words, `quoted` identifiers, string
// literals and single punctuation characters. Comments are skipped, except
// executable comments (/*!50100 ... */, /*M! ... */), whose content counts.
func tokenize(s string) []token {
	var out []token
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f':
			i++
		case c == '#' || (c == '-' && strings.HasPrefix(s[i:], "-- ")):
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case strings.HasPrefix(s[i:], "/*!") || strings.HasPrefix(s[i:], "/*M!"):
			i += 3
			if s[i-1] == 'M' {
				i++
			}
			for i < len(s) && s[i] >= '0' && s[i] <= '9' {
				i++
			}
		case strings.HasPrefix(s[i:], "*/"):
			i += 2 // the end of an executable comment
		case strings.HasPrefix(s[i:], "/*"):
			end := strings.Index(s[i+2:], "*/")
			if end < 0 {
				return out
			}
			i += end + 4
		case c == '`':
			var b strings.Builder
			i++
			for i < len(s) {
				if s[i] == '`' {
					if i+1 < len(s) && s[i+1] == '`' {
						b.WriteByte('`')
						i += 2
						continue
					}
					break
				}
				b.WriteByte(s[i])
				i++
			}
			i++
			out = append(out, token{text: b.String(), quoted: true})
		case c == '\'' || c == '"':
			q := c
			i++
			for i < len(s) && s[i] != q {
				if s[i] == '\\' {
					i++
				}
				i++
			}
			i++
			out = append(out, token{text: "''"})
		case isWordByte(c):
			j := i
			for j < len(s) && isWordByte(s[j]) {
				j++
			}
			out = append(out, token{text: s[i:j]})
			i = j
		default:
			out = append(out, token{text: s[i : i+1]})
			i++
		}
	}
	return out
}
