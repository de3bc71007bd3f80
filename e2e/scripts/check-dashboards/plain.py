"""What Grafana's schema does not say about cellstack's dashboards, checked with the standard
library (run by e2e/scripts/check-dashboards.sh):

- every dashboard has a uid, unique among the files checked, and panel ids unique within it;
- every panel (rows aside), every target, every query variable and every annotation query reads
  the `${datasource}` variable, and a `datasource` variable of type prometheus exists;
- every target and annotation query has a non-empty `expr`;
- every `$variable` used in an expression or a title is one the dashboard defines, or one of
  Grafana's own (`$__rate_interval`, `$__range`, ...); `$1` (label_replace) is left alone.

With --rules FILE it also writes every expression as a Prometheus recording rule (one group per
dashboard, one rule per target, variable and annotation, named `<file>:panel_<id>_<refId>`,
`<file>:variable_<name>` or `<file>:annotation_<i>`), with Grafana's
variables replaced by sample values, for `promtool check rules` to parse.

Prints `FILE: PATH: MESSAGE` per problem; exits 1 when there is any.
"""

import argparse
import json
import os
import re
import sys

DATASOURCE_REFS = ("${datasource}", "$datasource")
# Grafana's global variables, with a sample value of the right kind for promtool.
GLOBALS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
VARIABLE = re.compile(r"\$(?:\{([A-Za-z_]\w*)(?::[^}]*)?\}|([A-Za-z_]\w*))")


def panels(dashboard):
    """(path, panel) of every panel, rows' children included."""
    for i, panel in enumerate(dashboard.get("panels") or []):
        yield f"panels[{i}]", panel
        for j, child in enumerate(panel.get("panels") or []):
            yield f"panels[{i}].panels[{j}]", child


def uses_datasource_variable(ref):
    return isinstance(ref, dict) and ref.get("uid") in DATASOURCE_REFS


def variable_query(variable):
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query")
    return query if isinstance(query, str) else ""


def promql_of(variable_query_text):
    """The PromQL inside a query variable: label_values(X, label) and query_result(X) hold X."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", variable_query_text, re.S)
    if m:
        return m.group(1)
    m = re.fullmatch(r"\s*(?:query_result|label_values)\((.*)\)\s*", variable_query_text, re.S)
    if m:
        return m.group(1)
    return None  # label_names(), metrics(...): nothing to parse


def check(path, dashboard, uids, problems, rules):
    def problem(where, message):
        problems.append(f"{path}: {where}: {message}")

    uid = dashboard.get("uid")
    if not uid:
        problem("uid", "missing")
    elif uid in uids:
        problem("uid", f"{uid!r} is also the uid of {uids[uid]}")
    else:
        uids[uid] = path

    variables = (dashboard.get("templating") or {}).get("list") or []
    defined = {v.get("name") for v in variables}
    samples = {}
    for v in variables:
        current = (v.get("current") or {}).get("value")
        samples[v.get("name")] = current if isinstance(current, str) and current else "x"
    if not any(v.get("type") == "datasource" and v.get("name") == "datasource"
               and v.get("query") == "prometheus" for v in variables):
        problem("templating.list", 'no variable "datasource" of type datasource (query "prometheus")')

    def check_variables_in(where, text):
        for m in VARIABLE.finditer(text or ""):
            name = m.group(1) or m.group(2)
            if name not in defined and name not in GLOBALS and not name.startswith("__"):
                problem(where, f"${name} is not a variable of the dashboard")

    def substitute(expr):
        def value(m):
            name = m.group(1) or m.group(2)
            return GLOBALS.get(name) or samples.get(name) or "x"
        return VARIABLE.sub(value, expr)

    group = {"name": os.path.basename(path), "rules": []}
    prefix = re.sub(r"[^A-Za-z0-9_]", "_", os.path.splitext(os.path.basename(path))[0])

    def rule(name, where, expr):
        group["rules"].append({"record": f"{prefix}:{name}", "expr": substitute(expr),
                               "labels": {"at": where}})

    ids = {}
    for where, panel in panels(dashboard):
        pid = panel.get("id")
        if pid in ids:
            problem(f"{where}.id", f"{pid} is also the id of {ids[pid]}")
        else:
            ids[pid] = where
        title = panel.get("title", "")
        check_variables_in(f"{where}.title", title)
        if panel.get("type") == "row":
            continue
        named = f'{where} ("{title}")'
        if not uses_datasource_variable(panel.get("datasource")):
            problem(f"{named}.datasource", "must be {\"type\": \"prometheus\", \"uid\": \"${datasource}\"}, "
                    f"not {json.dumps(panel.get('datasource'))}")
        targets = panel.get("targets") or []
        if not targets:
            problem(f"{named}.targets", "none")
        for i, target in enumerate(targets):
            at = f"{named}.targets[{i}]"
            if not uses_datasource_variable(target.get("datasource")):
                problem(f"{at}.datasource", "must use the ${datasource} variable")
            expr = target.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problem(f"{at}.expr", "missing or empty")
                continue
            check_variables_in(f"{at}.expr", expr)
            rule(f"panel_{pid}_{target.get('refId', i)}", f"{where}.targets[{i}]", expr)

    for i, v in enumerate(variables):
        at = f"templating.list[{i}] ({v.get('name')})"
        if v.get("type") != "query":
            continue
        if not uses_datasource_variable(v.get("datasource")):
            problem(f"{at}.datasource", "must use the ${datasource} variable")
        query = variable_query(v)
        if not query.strip():
            problem(f"{at}.query", "missing or empty")
            continue
        check_variables_in(f"{at}.query", query)
        promql = promql_of(query)
        if promql is not None:
            rule(f"variable_{v.get('name')}", f"templating.list[{i}]", promql)

    for i, a in enumerate((dashboard.get("annotations") or {}).get("list") or []):
        if a.get("builtIn"):
            continue
        at = f"annotations.list[{i}] ({a.get('name')})"
        if not uses_datasource_variable(a.get("datasource")):
            problem(f"{at}.datasource", "must use the ${datasource} variable")
        expr = a.get("expr")
        if not isinstance(expr, str) or not expr.strip():
            problem(f"{at}.expr", "missing or empty")
            continue
        check_variables_in(f"{at}.expr", expr)
        rule(f"annotation_{i}", f"annotations.list[{i}]", expr)

    rules.append(group)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rules", help="write every expression as a recording rule into this file")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    problems, uids, groups = [], {}, []
    for path in args.files:
        try:
            with open(path, encoding="utf-8") as f:
                dashboard = json.load(f)
        except (OSError, ValueError) as e:
            problems.append(f"{path}: not a JSON file: {e}")
            continue
        if not isinstance(dashboard, dict):
            problems.append(f"{path}: not a JSON object")
            continue
        check(path, dashboard, uids, problems, groups)
    if args.rules:
        with open(args.rules, "w", encoding="utf-8") as f:
            json.dump({"groups": groups}, f, indent=1)
    for p in problems:
        print(p)
    if not problems:
        print(f"{len(args.files)} dashboard(s): unique uids and panel ids, every panel, target and "
              "variable on ${datasource}, every target with an expression, no unknown variable")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
