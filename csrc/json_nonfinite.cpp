// Python's non-finite float tokens over nlohmann's parser and writer: see
// detail/json_nonfinite.hpp.
//
// A text holding such tokens is rewritten with each token replaced by `0` and
// spaces (the same number of bytes, so nlohmann's error positions are the
// text's), and parsed with a callback that turns those numbers back into the
// tokens' values. The scan counts the text's numbers in document order, the
// order in which the parser calls back for them: a value of valid JSON that
// starts with `-` or a digit outside a string is a number and nothing else.

#include "detail/json_nonfinite.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

namespace safetensors::detail {

namespace {

using json = nlohmann::ordered_json;

struct Token {
  std::string_view text;
  double value;
};

constexpr Token kTokens[] = {
    {"NaN", std::numeric_limits<double>::quiet_NaN()},
    {"Infinity", std::numeric_limits<double>::infinity()},
    {"-Infinity", -std::numeric_limits<double>::infinity()},
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

bool in_number(char c) { return (c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-'; }

// Whether a value that ends before `at` is followed by what may follow a value.
bool value_ends(std::string_view text, std::size_t at) {
  return at == text.size() || is_space(text[at]) || text[at] == ',' || text[at] == ']' || text[at] == '}';
}

void dump_into(const json& value, std::string& out) {
  switch (value.type()) {
    case json::value_t::object: {
      out += '{';
      for (auto it = value.begin(); it != value.end(); ++it) {
        if (it != value.begin()) out += ',';
        out += json(it.key()).dump();
        out += ':';
        dump_into(it.value(), out);
      }
      out += '}';
      return;
    }
    case json::value_t::array: {
      out += '[';
      for (auto it = value.begin(); it != value.end(); ++it) {
        if (it != value.begin()) out += ',';
        dump_into(*it, out);
      }
      out += ']';
      return;
    }
    case json::value_t::number_float: {
      const double v = value.get<double>();
      if (std::isnan(v)) {
        out += "NaN";
      } else if (std::isinf(v)) {
        out += v > 0 ? "Infinity" : "-Infinity";
      } else {
        out += value.dump();
      }
      return;
    }
    default: out += value.dump();
  }
}

}  // namespace

std::size_t json_depth(std::string_view text) {
  std::size_t depth = 0, deepest = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '"') {
      for (++i; i < text.size() && text[i] != '"'; ++i)
        if (text[i] == '\\') ++i;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

json parse_python_json(std::string_view text) {
  std::optional<std::string> rewritten;                // once a token is found
  std::vector<std::pair<std::size_t, double>> values;  // (the number's position among the numbers, value)
  std::size_t numbers = 0;
  bool value_next = true;  // a value may start here: at the start, after `[`, `,` or `:`
  std::size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if (is_space(c)) {
      ++i;
    } else if (c == '"') {
      // To the closing quote; an escape takes the character after it along.
      ++i;
      while (i < text.size() && text[i] != '"') i += text[i] == '\\' ? 2 : 1;
      ++i;
      value_next = false;
    } else {
      const Token* token = nullptr;
      if (value_next)
        for (const Token& t : kTokens)
          if (text.compare(i, t.text.size(), t.text) == 0 && value_ends(text, i + t.text.size())) token = &t;
      if (token) {
        if (!rewritten) rewritten.emplace(text);
        std::fill_n(rewritten->begin() + static_cast<std::ptrdiff_t>(i), token->text.size(), ' ');
        (*rewritten)[i] = '0';
        values.emplace_back(numbers++, token->value);
        i += token->text.size();
        value_next = false;
      } else if (c == '-' || (c >= '0' && c <= '9')) {
        ++numbers;
        while (i < text.size() && in_number(text[i])) ++i;
        value_next = false;
      } else {
        value_next = c == '[' || c == ',' || c == ':';
        ++i;
      }
    }
  }
  if (!rewritten) return json::parse(text.data(), text.data() + text.size());
  std::size_t number = 0;
  std::size_t next = 0;
  const json::parser_callback_t restore = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::value && parsed.is_number()) {
      if (next < values.size() && values[next].first == number) parsed = values[next++].second;
      ++number;
    }
    return true;
  };
  return json::parse(*rewritten, restore);
}

std::string dump_python_json(const json& value) {
  std::string out;
  dump_into(value, out);
  return out;
}

}  // namespace safetensors::detail
