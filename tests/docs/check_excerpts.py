#!/usr/bin/env python3
"""check_excerpts.py: the README's excerpts of the source are the source.

The READMEs quote the lock's Lua scripts (service/lock_scripts.h) and the
fenced SQL (service/store.c) so that a reader sees the text that runs. A
quote that drifts from the code teaches the wrong thing, and nobody notices:
this check fails when one does.

An excerpt is a fenced code block with a marker on the line right before it
that names the source file and the C name of the string it shows:

    <!-- excerpt: service/lock_scripts.h LOCK_SCRIPT_ACQUIRE -->
    ```lua
    ...
    ```

The name is a macro (`#define NAME "..." ...`), a variable
(`static const char NAME[] = "..." ...;`), or, in double quotes, the key of
a row of a table of named strings (`{"check", "SQL" ...}`). Its value is
rebuilt as the compiler sees it: string literals decoded and
concatenated, and the macros of the same file that it uses expanded
(object-like and function-like), each with the definition that is active
when no negative control (COUPONSVC_UNSAFE_*) and nothing else from
outside the file is defined.
The block (less the indentation of its fence, for a block inside a list)
must equal that value: byte for byte when the value has line breaks, as
the Lua scripts do; with runs of white space counted as one space when it
is a single line, as SQL built from fragments is, so the README may break
and indent it for the reader.

Every ```lua and ```sql block must be an excerpt: a script or a statement
shown without a marker would be a quote nobody checks.

The READMEs' reading paths name code as `service/claim.c:claim__locked`
(file:name, names rather than line numbers so that they stay true): every
such reference must name a function, macro or variable defined in that
file, so that a rename which forgets the README fails here. Likewise every
repository path they quote (`service/...`, `deploy/...`, `tests/...`,
`loadtest/...`, `migrations/...`, `.ci/...`) must exist, so that a file
moved or removed takes its mentions with it.

Usage: check_excerpts.py [ROOT [FILE.md ...]]. Default: README.md and
deploy/README.md under ROOT (default: the repository this file is in).
Exit 0 when every excerpt matches, 1 with a diff per mismatch otherwise;
the last line is "N passed, N failed", as tests/run.sh adds up.
Pure Python 3, standard library only.
"""

import difflib
import os
import re
import sys

MARKER = re.compile(
    r'^\s*<!--\s*excerpt:\s*(\S+)\s+([A-Za-z_]\w*|"[^"]+")\s*-->\s*$')
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
CHECKED_LANGS = ("lua", "sql")


class ExcerptError(Exception):
    pass


# --------------------------------------------------------------- C side ----

TOKEN = re.compile(
    r"""
      (?P<ws>[ \t\r\f\v]+)
    | (?P<nl>\n)
    | (?P<comment>/\*.*?\*/|//[^\n]*)
    | (?P<str>(?:u8|u|U|L)?"(?:[^"\\\n]|\\.)*")
    | (?P<chr>'(?:[^'\\\n]|\\.)*')
    | (?P<id>[A-Za-z_]\w*)
    | (?P<num>\.?\d(?:[\w.]|[eEpP][+-])*)
    | (?P<punct>\#\#|\#|&&|\|\||[<>=!]=|<<|>>|->|\+\+|--|.)
    """,
    re.S | re.X,
)


def c_tokens(text):
    """The file's tokens, as (kind, text); comments become white space and
    backslash-newline continuations are joined, as translation phases 2-3
    do. Newlines are kept: they end preprocessor directives."""
    text = text.replace("\\\r\n", "").replace("\\\n", "")
    out, prev_end = [], -1
    for m in TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "punct" and m.group() == "(" and m.start() == prev_end:
            kind = "tight("  # NAME( with no space: a function-like #define
        prev_end = m.end() if kind == "id" else -1
        if kind in ("ws", "comment"):
            if kind == "comment" and "\n" in m.group():
                out.append(("nl", "\n"))  # a comment spanning lines ends none
            continue
        out.append((kind, m.group()))
    return out


ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'",
           "a": "\a", "b": "\b", "f": "\f", "v": "\v", "?": "?"}


def c_string_value(lit):
    """The value of one C string literal token."""
    body = lit[lit.index('"') + 1:-1]
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in ESCAPES:
            out.append(ESCAPES[nxt])
            i += 2
        elif nxt == "x":
            m = re.match(r"[0-9A-Fa-f]+", body[i + 2:])
            out.append(chr(int(m.group(), 16)))
            i += 2 + len(m.group())
        elif nxt in "01234567":
            m = re.match(r"[0-7]{1,3}", body[i + 1:])
            out.append(chr(int(m.group(), 8)))
            i += 1 + len(m.group())
        else:
            raise ExcerptError("unknown escape \\%s in %s" % (nxt, lit))
    return "".join(out)


class Macro:
    def __init__(self, params, body):
        self.params = params  # None: object-like
        self.body = body      # tokens, without newlines


def eval_condition(toks, macros):
    """An #if / #elif expression: defined(X) is whether X is defined here,
    any other name is 0 (as in C), the operators are C's."""
    expr, i = [], 0
    while i < len(toks):
        kind, t = toks[i]
        if t == "defined":
            j = i + 1
            paren = j < len(toks) and toks[j][1] == "("
            if paren:
                j += 1
            name = toks[j][1]
            j += 2 if paren else 1
            expr.append("1" if name in macros else "0")
            i = j
            continue
        if kind == "id":
            m = macros.get(t)
            if m is not None and m.params is None and len(m.body) == 1 \
                    and m.body[0][0] == "num":
                expr.append(m.body[0][1].rstrip("uUlL"))
            else:
                expr.append("0")
        elif kind == "num":
            expr.append(t.rstrip("uUlL"))
        else:
            expr.append({"&&": " and ", "||": " or ", "!": " not ",
                         "/": "//"}.get(t, t))
        i += 1
    try:
        return bool(eval("".join(expr), {"__builtins__": {}}, {}))
    except Exception as e:  # a condition this small parser cannot read
        raise ExcerptError("cannot evaluate #if %s (%s)"
                           % (" ".join(t for _, t in toks), e))


def token_lines(tokens):
    """The tokens cut into lines (newline tokens dropped), since a
    directive is one line."""
    lines, cur = [], []
    for tok in tokens:
        if tok[0] == "nl":
            lines.append(cur)
            cur = []
        else:
            cur.append(tok)
    lines.append(cur)
    return lines


def preprocess(tokens):
    """Runs the file's conditionals and #defines with nothing defined from
    outside. Returns (macros defined at the end, the active code tokens)."""
    macros, code = {}, []
    # One entry per open #if: [this branch is active, some branch was taken,
    # the enclosing code is active].
    stack = []
    active = True
    for line in token_lines(tokens):
        if not line or line[0][1] != "#":
            if active:
                code.extend(line)
            continue
        if len(line) == 1:
            continue
        d, rest = line[1][1], line[2:]
        if d in ("if", "ifdef", "ifndef"):
            if d == "if":
                cond = active and eval_condition(rest, macros)
            else:
                cond = active and ((rest[0][1] in macros) == (d == "ifdef"))
            stack.append([cond, cond, active])
            active = cond
        elif d == "elif":
            top = stack[-1]
            cond = top[2] and not top[1] and eval_condition(rest, macros)
            top[0] = cond
            top[1] = top[1] or cond
            active = cond
        elif d == "else":
            top = stack[-1]
            top[0] = top[2] and not top[1]
            top[1] = True
            active = top[0]
        elif d == "endif":
            active = stack.pop()[2]
        elif not active:
            continue
        elif d == "define":
            name, body = rest[0][1], rest[1:]
            params = None
            # Function-like when its "(" touches the name: NAME(t) is,
            # NAME ("x") is not.
            if body and body[0][0] == "tight(":
                end = [t for _, t in body].index(")")
                params = [t for k, t in body[1:end] if k == "id"]
                body = body[end + 1:]
            macros[name] = Macro(params, body)
        elif d == "undef":
            macros.pop(rest[0][1], None)
    return macros, code


def split_args(toks, start):
    """The arguments of a macro call whose "(" is toks[start]; returns
    (list of token lists, index after the ")")."""
    args, cur, depth, i = [], [], 0, start + 1
    while i < len(toks):
        t = toks[i][1]
        if t == "(":
            depth += 1
        elif t == ")":
            if depth == 0:
                args.append(cur)
                return args, i + 1
            depth -= 1
        elif t == "," and depth == 0:
            args.append(cur)
            cur = []
            i += 1
            continue
        cur.append(toks[i])
        i += 1
    raise ExcerptError("unterminated macro call")


def expand(toks, macros, hiding=frozenset()):
    """Macro expansion, enough for string-building macros: object-like and
    function-like macros whose bodies are literals, parameters and other
    macros (no # or ##)."""
    out, i = [], 0
    while i < len(toks):
        kind, t = toks[i]
        m = macros.get(t) if kind == "id" and t not in hiding else None
        if m is None:
            out.append(toks[i])
            i += 1
            continue
        if m.params is None:
            out.extend(expand(m.body, macros, hiding | {t}))
            i += 1
            continue
        if i + 1 >= len(toks) or toks[i + 1][1] != "(":
            out.append(toks[i])
            i += 1
            continue
        args, i = split_args(toks, i + 1)
        if len(args) != len(m.params):
            raise ExcerptError("%s takes %d arguments, given %d"
                               % (t, len(m.params), len(args)))
        actual = {p: expand(a, macros, hiding) for p, a in zip(m.params, args)}
        body = []
        for tok in m.body:
            if tok[1] in ("#", "##"):
                raise ExcerptError("%s uses # or ##: not supported" % t)
            body.extend(actual.get(tok[1], [tok]) if tok[0] == "id" else [tok])
        out.extend(expand(body, macros, hiding | {t}))
    return out


def find_variable(code, name):
    """The initializer tokens of `... NAME[] = ...;` or `... *NAME = ...;`."""
    for i, (kind, t) in enumerate(code):
        if kind != "id" or t != name:
            continue
        j = i + 1
        while j < len(code) and code[j][1] in ("[", "]"):
            j += 1
        if j < len(code) and code[j][1] == "=":
            k = j + 1
            while k < len(code) and code[k][1] not in (";", ","):
                k += 1
            return code[j + 1:k]
    return None


def find_table_entry(code, key):
    """The tokens after `{"key",` up to the entry's closing brace: a row of a
    table of named statements, such as store.c's {"name", "SQL"} rows."""
    for i, (kind, t) in enumerate(code):
        if kind == "str" and c_string_value(t) == key and i > 0 and \
                code[i - 1][1] == "{" and code[i + 1][1] == ",":
            depth, k = 0, i + 2
            while k < len(code):
                if code[k][1] in "({[":
                    depth += 1
                elif code[k][1] in ")]" or (code[k][1] == "}" and depth):
                    depth -= 1
                elif code[k][1] == "}" or (code[k][1] == "," and depth == 0):
                    return code[i + 2:k]
                k += 1
    return None


def source_string(path, name):
    """The value of the string NAME in the C file at path."""
    with open(path, encoding="utf-8") as f:
        macros, code = preprocess(c_tokens(f.read()))
    if name.startswith('"'):
        toks = find_table_entry(code, name.strip('"'))
        if toks is None:
            raise ExcerptError("no table row {%s, ...} in %s" % (name, path))
        toks = expand(toks, macros)
    elif name in macros and macros[name].params is None:
        toks = expand(macros[name].body, macros, frozenset([name]))
    else:
        toks = find_variable(code, name)
        if toks is None:
            raise ExcerptError("no macro or variable %s in %s" % (name, path))
        toks = expand(toks, macros)
    bad = [t for k, t in toks if k != "str" and t not in ("(", ")")]
    if bad or not toks:
        raise ExcerptError("%s in %s is not a string (it has %s)"
                           % (name, path, " ".join(bad[:5]) or "nothing"))
    return "".join(c_string_value(t) for k, t in toks if k == "str")


# ---------------------------------------------------------- README side ----

def excerpts(md_path):
    """Every excerpt in a markdown file, and the lua/sql blocks that lack a
    marker: ([(line, source, name, text)], [(line, lang)])."""
    with open(md_path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    found, unmarked = [], []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            mark = MARKER.match(lines[i])
            if mark and not (i + 1 < len(lines) and FENCE.match(lines[i + 1])):
                raise ExcerptError("%s:%d: excerpt marker not right before a "
                                   "code block" % (md_path, i + 1))
            i += 1
            continue
        indent, lang = m.group(1), m.group(2)
        start = i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ExcerptError("%s:%d: code block never closed"
                               % (md_path, start + 1))
        i += 1
        mark = MARKER.match(lines[start - 1]) if start > 0 else None
        if not mark:
            if lang in CHECKED_LANGS:
                unmarked.append((start + 1, lang))
            continue
        text = []
        for n, line in enumerate(body):
            if line.strip() and not line.startswith(indent):
                raise ExcerptError("%s:%d: line indented less than its fence"
                                   % (md_path, start + 2 + n))
            text.append(line[len(indent):])
        found.append((start + 1, mark.group(1), mark.group(2),
                      "\n".join(text) + "\n"))
    return found, unmarked


REF = re.compile(
    r"`((?:service|loadtest|tests)/[\w./-]+\.[ch]):([A-Za-z_]\w*)`")
PATH = re.compile(
    r"`((?:service|deploy|tests|loadtest|migrations|\.ci)/[\w./@-]*)`")


def defines(text, name):
    """Whether C source text defines name at file level: a function (its
    parameter list followed by a body), a macro, a variable, or a type (a
    typedef's name, `} name;` or `typedef ... name;`)."""
    n = re.escape(name)
    if re.search(r"^\s*#\s*define\s+%s\b" % n, text, re.M):
        return True
    if re.search(r"^(\}|typedef\b[^;]*)\s*\b%s\s*;" % n, text, re.M):
        return True
    if re.search(r"^[A-Za-z_][^;(){}\n]*\b%s\s*(\[[^\]]*\])?\s*=" % n, text,
                 re.M):
        return True
    for m in re.finditer(r"^[A-Za-z_][^;(){}\n]*\b%s\s*\(" % n, text, re.M):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        rest = text[i:].lstrip()
        if rest.startswith("{"):
            return True
    return False


def check_refs(root, md):
    """The file:name references of one markdown file: (passed, failed)."""
    with open(os.path.join(root, md), encoding="utf-8") as f:
        lines = f.read().split("\n")
    cache, passed, failed = {}, 0, 0
    for lineno, line in enumerate(lines, 1):
        for m in REF.finditer(line):
            src, name = m.group(1), m.group(2)
            if src not in cache:
                try:
                    with open(os.path.join(root, src), encoding="utf-8") as f:
                        cache[src] = f.read()
                except OSError:
                    cache[src] = None
            if cache[src] is None:
                print("FAIL %s:%d: `%s:%s`: no file %s"
                      % (md, lineno, src, name, src))
                failed += 1
            elif not defines(cache[src], name):
                print("FAIL %s:%d: `%s:%s`: %s defines no %s"
                      % (md, lineno, src, name, src, name))
                failed += 1
            else:
                passed += 1
        for m in PATH.finditer(line):
            if os.path.exists(os.path.join(root, m.group(1))):
                passed += 1
            else:
                print("FAIL %s:%d: `%s`: no such file or directory"
                      % (md, lineno, m.group(1)))
                failed += 1
    if passed:
        print("ok   %s: %d paths and file:name references name what exists"
              % (md, passed))
    return passed, failed


def squeeze(s):
    return " ".join(s.split())


def squeeze_line(line):
    """A line with its indentation kept and white space inside it squeezed,
    as reflow lays out the source."""
    return line[:len(line) - len(line.lstrip())] + squeeze(line) + "\n"


def reflow(want, text):
    """The one-line source string laid out as the excerpt is: each of the
    excerpt's lines, with its indentation, holding as many of the source's
    words as it holds itself. A diff against the excerpt then shows the
    line where they part, not one word a line."""
    words, out = want.split(), []
    for line in text.splitlines():
        n = len(line.split())
        indent = line[:len(line) - len(line.lstrip())]
        out.append(indent + " ".join(words[:n]) + "\n")
        words = words[n:]
    if words:
        out.append(" ".join(words) + "\n")
    return out


def check(root, md_files):
    passed, failures = 0, 0
    for md in md_files:
        md_path = os.path.join(root, md)
        found, unmarked = excerpts(md_path)
        for line, lang in unmarked:
            print("FAIL %s:%d: a ```%s block without an excerpt marker "
                  "(<!-- excerpt: FILE NAME --> on the line before it)"
                  % (md, line, lang))
            failures += 1
        for line, src, name, text in found:
            where = "%s:%d" % (md, line)
            try:
                want = source_string(os.path.join(root, src), name)
            except (OSError, ExcerptError) as e:
                print("FAIL %s: %s" % (where, e))
                failures += 1
                continue
            if "\n" in want.rstrip("\n"):
                same = text == want if want.endswith("\n") \
                    else text.rstrip("\n") == want
                a, b = text.splitlines(True), want.splitlines(True)
            else:
                same = squeeze(text) == squeeze(want)
                a = [squeeze_line(x) for x in text.splitlines(True)]
                b = reflow(want, text)
            if same:
                print("ok   %s = %s %s" % (where, src, name))
                passed += 1
                continue
            failures += 1
            print("FAIL %s: the excerpt differs from %s %s%s:"
                  % (where, src, name,
                     "" if "\n" in want.rstrip("\n")
                     else " (compared word by word)"))
            for d in difflib.unified_diff(b, a, "%s %s" % (src, name),
                                          where + " (README)"):
                print(d, end="" if d.endswith("\n") else "\n")
        p, f = check_refs(root, md)
        passed += 1 if p and not f else 0
        failures += f
    # The summary line tests/run.sh adds up: one "passed" per excerpt equal
    # to its source, and one per file whose references all hold.
    print("%d passed, %d failed" % (passed, failures))
    return failures == 0


def main(argv):
    here = os.path.abspath(__file__)
    root = argv[1] if len(argv) > 1 else \
        os.path.dirname(os.path.dirname(os.path.dirname(here)))
    md_files = argv[2:] or [f for f in ("README.md", "deploy/README.md")
                            if os.path.exists(os.path.join(root, f))]
    try:
        return 0 if check(root, md_files) else 1
    except ExcerptError as e:
        print("FAIL %s" % e)
        print("0 passed, 1 failed")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
