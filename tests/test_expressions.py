"""Tests for the expression engine: native values, strict names, skips, analysis and the sandbox."""

from __future__ import annotations

import pytest

from dagwright.interpreter.expressions import (
    SKIPPED,
    Analysis,
    ExpressionError,
    ExpressionSyntaxError,
    NodeView,
    Reference,
    analyze_expression,
    analyze_template,
    build_context,
    evaluate_expression,
    is_template,
    render_template,
    render_value,
)


@pytest.fixture
def context() -> dict:
    """A run with succeeded, skipped, failed and null-output nodes."""
    return build_context(
        inputs={"ticker": "ACME", "threshold": 0.7, "payload": "{{ 7*7 }}", "block": "{% for %}"},
        nodes={
            "fetch": NodeView("succeeded", {"status": 200, "json": {"x": 1, "items": [10, 20], "_id": "i1"}}),
            "rows": NodeView("succeeded", [{"name": "a", "n": 1}, {"name": "b", "n": 2}]),
            "a": NodeView("skipped", {"text": "stale output is ignored"}),
            "b": {"status": "succeeded", "output": {"text": "from b"}, "error": None},
            "broken": NodeView("failed", None, "HTTP 500 from the server"),
            "empty": NodeView("succeeded", None),
        },
        run={"id": "run-1", "workflow": "demo", "started_at": "2026-01-01T00:00:00Z"},
    )


def error_of(source: str, context: dict, evaluate=render_template) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        evaluate(source, context)
    return info.value


class TestNativeValues:
    def test_single_expression_gives_dict(self, context):
        assert render_template("{{ nodes.fetch.output.json }}", context) == {
            "x": 1,
            "items": [10, 20],
            "_id": "i1",
        }

    def test_single_expression_gives_list(self, context):
        assert render_template("{{ nodes.rows.output | map(attribute='n') }}", context) == [1, 2]

    def test_single_expression_gives_int(self, context):
        assert render_template("{{ nodes.fetch.output.json.x + 1 }}", context) == 2

    def test_single_expression_gives_float(self, context):
        assert render_template("{{ inputs.threshold }}", context) == 0.7

    def test_single_expression_gives_bool(self, context):
        assert render_template("{{ inputs.threshold > 0.5 }}", context) is True

    def test_single_expression_gives_none(self, context):
        assert render_template("{{ nodes.empty.output }}", context) is None

    def test_whitespace_around_braces_native(self, context):
        assert render_template("  {{ nodes.fetch.output.json.items }}\n", context) == [10, 20]

    def test_result_shares_context_objects(self, context):
        """Large outputs are returned as they are, without a copy."""
        output = context["nodes"]["rows"]["output"]
        assert render_template("{{ nodes.rows.output }}", context) is output

    def test_default_keeps_context_object(self, context):
        output = context["nodes"]["rows"]["output"]
        assert render_template("{{ nodes.rows.output | default([]) }}", context) is output

    def test_literal_structures_are_plain_lists(self, context):
        assert render_template("{{ (1, [inputs.ticker], {'k': range(2)}) }}", context) == [
            1,
            ["ACME"],
            {"k": [0, 1]},
        ]

    def test_text_without_template_unchanged(self, context):
        assert render_template("plain text } {", context) == "plain text } {"

    def test_function_result_rejected(self, context):
        error = error_of("{{ nodes.fetch.output.json.get }}", context)
        assert "not a JSON value" in error.message
        assert error.hint == "Call it with () to use its result."


class TestTextRendering:
    def test_structures_render_as_json(self, context):
        text = render_template("data={{ nodes.fetch.output.json }} rows={{ nodes.rows.output | length }}", context)
        assert text == 'data={"x": 1, "items": [10, 20], "_id": "i1"} rows=2'

    def test_bool_and_null_render_as_json(self, context):
        assert render_template("{{ true }}/{{ false }}/{{ none }}/{{ nodes.empty.output }}", context) == (
            "true/false/null/null"
        )

    def test_strings_and_numbers_render_as_is(self, context):
        assert render_template("{{ inputs.ticker }}: {{ inputs.threshold }} {{ 3 }}", context) == "ACME: 0.7 3"

    def test_trailing_newline_kept(self, context):
        assert render_template("Ticker {{ inputs.ticker }}\n", context) == "Ticker ACME\n"

    def test_loops_and_set(self, context):
        source = "{% set sep = ', ' %}{% for row in nodes.rows.output %}{{ row.name }}{{ sep if not loop.last else '' }}{% endfor %}"
        assert render_template(source, context) == "a, b"

    def test_inline_if_without_else_fails(self, context):
        error = error_of("{{ 'x' if false }}", context)
        assert error.message == "the inline if-expression on line 1 evaluated to false and no else section was defined"

    def test_tojson_insertion_order(self, context):
        source = "{{ {'b': 1, 'a': '<é>'} | tojson }}"
        assert render_template(source, context) == '{"b": 1, "a": "<é>"}'

    def test_tojson_indent(self, context):
        assert render_template("{{ [1] | tojson(indent=2) }}", context) == "[\n  1\n]"

    def test_fromjson_parses_string(self, context):
        assert render_template("{{ '{\"a\": [1, null]}' | fromjson }}", context) == {"a": [1, None]}

    def test_fromjson_invalid_input(self, context):
        error = error_of("{{ 'not json' | fromjson }}", context)
        assert error.message.startswith("fromjson could not parse its input")

    def test_base64_round_trip(self, context):
        assert render_template("{{ 'héllo' | b64encode }}", context) == "aMOpbGxv"
        assert render_template("{{ 'aMOpbGxv' | b64decode }}", context) == "héllo"

    def test_b64decode_invalid_input(self, context):
        error = error_of("{{ '***' | b64decode }}", context)
        assert error.message == "b64decode input is not base64-encoded UTF-8 text"


class TestStrictNames:
    def test_unknown_root_name(self, context):
        error = error_of("{{ inptus.ticker }}", context)
        assert error.message == "unknown name 'inptus'"
        assert error.hint == "Did you mean 'inputs'?"
        assert str(error) == "unknown name 'inptus' in '{{ inptus.ticker }}'. Did you mean 'inputs'?"

    def test_missing_output_field(self, context):
        error = error_of("{{ nodes.fetch.output.jsn }}", context)
        assert error.message == "nodes.fetch.output has no field 'jsn'"
        assert error.expression == "{{ nodes.fetch.output.jsn }}"
        assert str(error).startswith("nodes.fetch.output has no field 'jsn' in '{{ nodes.fetch.output.jsn }}'.")
        assert error.hint == "Did you mean 'json'?"

    def test_unknown_node(self, context):
        assert error_of("{{ nodes.fetc.output }}", context).message == "unknown node 'fetc'"

    def test_unknown_node_field(self, context):
        assert error_of("{{ nodes.fetch.outptu }}", context).message == "node 'fetch' has no field 'outptu'"

    def test_unknown_input(self, context):
        assert error_of("{{ inputs.tickr }}", context).message == "unknown input 'tickr'"

    def test_index_out_of_range(self, context):
        error = error_of("{{ nodes.fetch.output.json.items[5] }}", context)
        assert error.message == "nodes.fetch.output.json.items has no index 5 (it has 2 items)"

    def test_missing_field_picks_failed_lookup(self, context):
        """The error names the lookup that failed, not the first lookup of the same key."""
        error = error_of("{{ nodes.b.output.text ~ nodes.fetch.output.text }}", context)
        assert error.message == "nodes.fetch.output has no field 'text'"

    def test_field_of_null_output(self, context):
        error = error_of("{{ nodes.empty.output.text }}", context)
        assert error.message == "nodes.empty.output is null, so it has no field 'text'"

    def test_missing_value_in_text(self, context):
        assert error_of("Hi {{ inputs.name }}", context).message == "unknown input 'name'"

    def test_missing_value_inside_literal(self, context):
        assert error_of("{{ [1, inputs.name] }}", context).message == "unknown input 'name'"

    def test_missing_attribute_in_map(self, context):
        error = error_of("{{ nodes.rows.output | map(attribute='nam') | list }}", context)
        assert error.message == "a mapping value has no field 'nam'"

    def test_missing_value_in_condition(self, context):
        assert error_of("{% if inputs.flag %}x{% endif %}", context).message == "unknown input 'flag'"

    def test_default_on_missing_field(self, context):
        assert render_template("{{ nodes.fetch.output.jsn | default('none') }}", context) == "none"

    def test_default_at_end_of_missing_chain(self, context):
        assert render_template("{{ nodes.fetch.output.a.b[0].c | default(0) }}", context) == 0

    def test_default_on_unknown_name(self, context):
        assert render_template("{{ nothing | default([]) }}", context) == []

    def test_is_defined(self, context):
        assert render_template("{{ inputs.name is defined }}", context) is False
        assert render_template("{{ inputs.ticker is defined }}", context) is True

    def test_data_key_wins_over_dict_method(self, context):
        assert render_template("{{ nodes.fetch.output.json.items }}", context) == [10, 20]

    def test_underscore_data_key_readable(self, context):
        assert render_template("{{ nodes.fetch.output.json._id }}", context) == "i1"

    def test_dict_method_without_matching_key(self, context):
        assert render_template("{{ nodes.fetch.output.json.keys() | list }}", context) == ["x", "items", "_id"]

    def test_failed_node_error_message(self, context):
        assert render_template("{{ nodes.broken.error }}", context) == "HTTP 500 from the server"


class TestStatusFunctions:
    @pytest.mark.parametrize(
        ("source", "expected"),
        [
            ("succeeded('fetch')", True),
            ("succeeded('a')", False),
            ("skipped('a')", True),
            ("failed('broken')", True),
            ("failed('fetch')", False),
            ("cancelled('fetch')", False),
            ("always()", True),
            ("failed('broken') and not succeeded('a')", True),
        ],
    )
    def test_status_function_value(self, context, source, expected):
        assert evaluate_expression(source, context) is expected

    def test_status_function_unknown_node(self, context):
        error = error_of("succeeded('fetchh')", context, evaluate_expression)
        assert error.message == "succeeded('fetchh') refers to unknown node 'fetchh'"
        assert error.hint == "Did you mean 'fetch'?"

    def test_status_field_readable(self, context):
        assert evaluate_expression("nodes.a.status", context) == "skipped"


class TestSkippedOutput:
    def test_skipped_output_is_none(self, context):
        assert evaluate_expression("nodes.a.output", context) is None

    def test_skipped_output_field_chain(self, context):
        assert evaluate_expression("nodes.a.output.text.deeper[3]['x']", context) is None

    def test_join_falls_through_skipped_branch(self, context):
        assert render_template("{{ nodes.a.output.text or nodes.b.output.text }}", context) == "from b"

    def test_skipped_output_is_none_test(self, context):
        assert evaluate_expression("nodes.a.output is none and nodes.a.output == none", context) is True

    def test_skipped_output_renders_null(self, context):
        assert render_template("a={{ nodes.a.output.text }}", context) == "a=null"

    def test_skipped_output_inside_literal(self, context):
        assert render_template("{{ {'a': nodes.a.output, 'b': [nodes.a.output.x]} }}", context) == {
            "a": None,
            "b": [None],
        }

    def test_skipped_output_in_tojson(self, context):
        assert render_template("{{ [nodes.a.output] | tojson }}", context) == "[null]"

    def test_build_context_drops_skipped_output(self, context):
        assert context["nodes"]["a"]["output"] is SKIPPED

    def test_iterating_skipped_output_fails(self, context):
        error = error_of("{% for x in nodes.a.output %}{{ x }}{% endfor %}", context)
        assert "skipped node is null and cannot be iterated" in error.message


class TestDataIsNotReparsed:
    def test_input_braces_literal_native(self, context):
        assert render_template("{{ inputs.payload }}", context) == "{{ 7*7 }}"

    def test_input_braces_literal_text(self, context):
        assert render_template("got {{ inputs.payload }}", context) == "got {{ 7*7 }}"

    def test_input_statement_tags_literal(self, context):
        assert render_template("got {{ inputs.block }}!", context) == "got {% for %}!"
        assert evaluate_expression("inputs.block", context) == "{% for %}"

    def test_render_value_data_literal(self, context):
        assert render_value({"a": ["{{ inputs.payload }}"]}, context) == {"a": ["{{ 7*7 }}"]}


class TestSandbox:
    @pytest.mark.parametrize(
        "source",
        [
            "{{ ''.__class__ }}",
            "{{ ''.__class__.__mro__ }}",
            "{{ range.__globals__ }}",
            "{{ nodes.__class__ }}",
            "{{ ''.__class__ | default('hidden') }}",
            "{{ 'x' | attr('__class__') }}",
            "{{ nodes.rows.output | map(attribute='__class__') | list }}",
        ],
    )
    def test_dunder_access_not_allowed(self, context, source):
        error = error_of(source, context)
        assert type(error) is ExpressionError
        assert "is not allowed" in error.message

    @pytest.mark.parametrize(
        "source",
        [
            "{{ {}.update({'a': 1}) }}",
            "{{ nodes.rows.output.append(1) }}",
            "{{ dict.update(inputs, {'ticker': 'EVIL'}) }}",
        ],
    )
    def test_mutation_not_allowed(self, context, source):
        error = error_of(source, context)
        assert "is not allowed" in error.message
        assert context["inputs"]["ticker"] == "ACME"

    def test_mro_attribute_fails(self, context):
        assert error_of("{{ ''.mro }}", context).message == "a string value has no field 'mro'"

    def test_cycler_escape_rejected(self, context):
        error = error_of("{{ cycler.__init__.__globals__ }}", context)
        assert isinstance(error, ExpressionSyntaxError)
        assert error.message == "'cycler' is not available because evaluation must be deterministic"

    @pytest.mark.parametrize("name", ["lipsum", "joiner", "namespace", "now"])
    def test_removed_global(self, context, name):
        error = error_of(f"{{{{ {name}() }}}}", context)
        assert error.message == f"{name!r} is not available because evaluation must be deterministic"

    def test_random_filter_removed(self, context):
        error = error_of("{{ [1, 2] | random }}", context)
        assert isinstance(error, ExpressionSyntaxError)
        assert error.message == "filter 'random' is not available because evaluation must be deterministic"

    def test_unknown_filter(self, context):
        error = error_of("{{ inputs.ticker | lowr }}", context)
        assert error.message == "unknown filter 'lowr'"
        assert error.hint == "Did you mean 'lower'?"

    def test_huge_power_not_allowed(self, context):
        assert "'**' with an exponent of 10000000 is not allowed" in error_of("{{ 10 ** 10000000 }}", context).message

    def test_huge_repetition_not_allowed(self, context):
        assert "'*' repeating a string" in error_of("{{ 'ab' * 100000000 }}", context).message

    def test_range_capped(self, context):
        assert "Range too big" in error_of("{{ range(10 ** 6) | list }}", context).message

    def test_include_rejected(self, context):
        error = error_of("{% include 'x.txt' %}", context)
        assert error.message == "extends, include and import are not available"

    def test_division_by_zero(self, context):
        assert error_of("{{ 1 / 0 }}", context).message == "division by zero"

    def test_type_error_translated(self, context):
        error = error_of("{{ inputs.ticker + 1 }}", context)
        assert error.message.startswith("evaluation failed with TypeError")
        assert isinstance(error.__cause__, TypeError)


class TestSyntaxErrors:
    def test_multiline_template_line(self):
        with pytest.raises(ExpressionSyntaxError) as info:
            analyze_template("line one\nline two {{ inputs.x }\nline three")
        assert info.value.line == 2
        assert info.value.message.startswith("invalid template:")

    def test_unclosed_block_line(self):
        with pytest.raises(ExpressionSyntaxError) as info:
            analyze_template("a\nb\n{% for x in inputs.xs %}\n{{ x }}")
        assert info.value.line == 4

    def test_multiline_expression_line(self):
        with pytest.raises(ExpressionSyntaxError) as info:
            analyze_expression("inputs.a\n and\n (inputs.b")
        assert info.value.line == 3

    def test_syntax_error_sentence(self):
        with pytest.raises(ExpressionSyntaxError) as info:
            analyze_template("{{ x }")
        assert str(info.value) == "invalid template: unexpected '}' in '{{ x }' (line 1)."

    def test_text_after_bare_expression(self):
        with pytest.raises(ExpressionSyntaxError):
            analyze_expression("inputs.a }} b")

    def test_braced_when_with_text_rejected(self):
        with pytest.raises(ExpressionSyntaxError) as info:
            analyze_expression("{{ inputs.a }} and {{ inputs.b }}")
        assert "expected one expression" in info.value.message

    def test_render_raises_syntax_error(self, context):
        with pytest.raises(ExpressionSyntaxError):
            render_template("{% if %}", context)


class TestAnalysis:
    def test_nested_attribute_path(self):
        analysis = analyze_template("{{ nodes.fetch.output.json.x }}")
        assert analysis == Analysis(
            references=(Reference("nodes", ("fetch", "output", "json", "x")),),
            status_calls=(),
            uses_status_functions=False,
            is_single_expression=True,
        )

    def test_getitem_with_constant_keys(self):
        analysis = analyze_template("{{ nodes['fetch'].output.rows[0][-1] }}")
        assert analysis.references == (Reference("nodes", ("fetch", "output", "rows", 0, -1)),)

    def test_dynamic_key_stops_path(self):
        analysis = analyze_template("{{ nodes[inputs.which].output }}")
        assert analysis.references == (Reference("nodes", ()), Reference("inputs", ("which",)))

    def test_source_order_and_deduplication(self):
        analysis = analyze_template("{{ inputs.b }} {{ run.id }} {{ inputs.b }} {{ item }} {{ index }}")
        assert analysis.references == (
            Reference("inputs", ("b",)),
            Reference("run", ("id",)),
            Reference("item", ()),
            Reference("index", ()),
        )
        assert analysis.is_single_expression is False

    def test_conditional_expression_in_source_order(self):
        analysis = analyze_expression("inputs.a if nodes.b.status else result")
        assert analysis.references == (
            Reference("inputs", ("a",)),
            Reference("nodes", ("b", "status")),
            Reference("result", ()),
        )

    def test_loop_and_set_names_excluded(self):
        source = (
            "{% set top = nodes.a.output %}"
            "{% for row in nodes.rows.output if row.n %}{{ row.name }} {{ loop.index }} {{ top.x }}{% endfor %}"
            "{% with w = inputs.w %}{{ w.y }}{% endwith %}"
        )
        assert analyze_template(source).references == (
            Reference("nodes", ("a", "output")),
            Reference("nodes", ("rows", "output")),
            Reference("inputs", ("w",)),
        )

    def test_loop_variable_does_not_leak(self):
        analysis = analyze_template("{% for x in inputs.xs %}{% set y = x %}{% endfor %}{{ x }}{{ y }}")
        assert analysis.references == (Reference("inputs", ("xs",)), Reference("x", ()), Reference("y", ()))

    def test_name_read_before_set_is_reference(self):
        analysis = analyze_template("{{ inputs.a }}{{ later }}{% set later = 1 %}{{ later }}")
        assert analysis.references == (Reference("inputs", ("a",)), Reference("later", ()))

    def test_macro_arguments_excluded(self):
        source = "{% macro show(v, sep=inputs.sep) %}{{ v }}{{ sep }}{% endmacro %}{{ show(nodes.a.output) }}"
        assert analyze_template(source).references == (
            Reference("inputs", ("sep",)),
            Reference("nodes", ("a", "output")),
        )

    def test_globals_and_filters_are_not_references(self):
        assert analyze_template("{{ range(3) | list }} {{ dict(a=1) }}").references == ()

    def test_secrets_reference(self):
        assert analyze_template("Bearer {{ secrets.API_TOKEN }}").references == (Reference("secrets", ("API_TOKEN",)),)

    def test_bare_when_expression(self):
        analysis = analyze_expression("nodes.review.output.approved and inputs.threshold > 0.5")
        assert analysis.references == (
            Reference("nodes", ("review", "output", "approved")),
            Reference("inputs", ("threshold",)),
        )
        assert analysis.is_single_expression is True

    def test_braced_when_expression(self):
        analysis = analyze_expression("{{ nodes.review.output.approved }}")
        assert analysis.references == (Reference("nodes", ("review", "output", "approved")),)

    def test_status_calls_extracted(self):
        analysis = analyze_expression("always() or failed('fetch') and not skipped('b') or failed('fetch')")
        assert analysis.status_calls == (("always", None), ("failed", "fetch"), ("skipped", "b"))
        assert analysis.uses_status_functions is True
        assert analysis.references == ()

    def test_status_calls_in_template(self):
        analysis = analyze_template("{% if succeeded('a') %}{{ nodes.a.output }}{% endif %}")
        assert analysis.status_calls == (("succeeded", "a"),)
        assert analysis.references == (Reference("nodes", ("a", "output")),)

    @pytest.mark.parametrize(
        "source",
        ["succeeded(inputs.node)", "failed('a' ~ 'b')", "skipped()", "always('x')", "succeeded(id='a')", "failed"],
    )
    def test_status_argument_not_literal(self, source):
        with pytest.raises(ExpressionSyntaxError) as info:
            analyze_expression(source)
        assert "status function" in info.value.message

    def test_non_literal_status_message(self):
        with pytest.raises(ExpressionSyntaxError) as info:
            analyze_expression("succeeded(inputs.node)")
        assert info.value.message == "status functions take a node id as a string literal"

    def test_plain_string_has_empty_analysis(self):
        assert analyze_template("no braces here") == Analysis((), (), False, False)


class TestRenderValue:
    def test_nested_structure(self, context):
        value = {
            "url": "https://x.example/{{ inputs.ticker }}",
            "json": {"rows": "{{ nodes.rows.output | length }}", "tags": ["{{ run.id }}", 3, None, True]},
            "{{ inputs.ticker }}": "key stays",
        }
        assert render_value(value, context) == {
            "url": "https://x.example/ACME",
            "json": {"rows": 2, "tags": ["run-1", 3, None, True]},
            "{{ inputs.ticker }}": "key stays",
        }

    def test_tuple_becomes_list(self, context):
        assert render_value(("{{ 1 }}", 2), context) == [1, 2]


class TestIsTemplate:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [("{{ x }}", True), ("{% if x %}{% endif %}", True), ("{# note #}", True), ("a { b } c", False)],
    )
    def test_detects_template_syntax(self, value, expected):
        assert is_template(value) is expected


class TestBuildContext:
    def test_optional_names_only_when_given(self):
        context = build_context(inputs={}, nodes={}, run={})
        assert sorted(context) == ["inputs", "nodes", "run"]

    def test_item_index_result_secrets(self):
        context = build_context(inputs={}, nodes={}, run={}, item=None, index=0, result={"r": 1}, secrets={"K": "v"})
        assert evaluate_expression("[item, index, result.r, secrets.K]", context) == [None, 0, 1, "v"]

    def test_node_view_shape(self):
        context = build_context(inputs={}, nodes={"n": NodeView("failed", None, "boom")}, run={})
        assert context["nodes"] == {"n": {"status": "failed", "output": None, "error": "boom"}}
