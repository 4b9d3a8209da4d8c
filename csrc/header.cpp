// Parsing and validation of the header. One SAX pass builds the tensor table
// straight from the JSON (no DOM, bounded depth, duplicates caught), then one
// loop over the tensors sorted by offset checks what the reference checks.

#include "safetensors/header.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>

#include <nlohmann/json.hpp>

#include "safetensors/error.hpp"
#include "checked.hpp"
#include "detail/text.hpp"

namespace safetensors {

std::uint64_t TensorInfo::numel() const noexcept {
  std::uint64_t n = 1;
  for (std::uint64_t d : shape) n *= d;
  return n;
}

namespace {

template <class Dim>
std::string dims_text(const std::vector<Dim>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

}  // namespace

std::string detail::shape_text(const std::vector<std::int64_t>& shape) { return dims_text(shape); }
std::string detail::shape_text(const std::vector<std::uint64_t>& shape) { return dims_text(shape); }

const TensorInfo* Header::find(std::string_view name) const& {
  auto it = std::lower_bound(by_name_.begin(), by_name_.end(), name,
                             [this](std::uint32_t i, std::string_view n) {
                               return std::string_view(tensors_[i].name) < n;
                             });
  if (it == by_name_.end() || tensors_[*it].name != name) return nullptr;
  return &tensors_[*it];
}

bool detail::is_valid_utf8(std::string_view s) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    // Fast path: 8 ASCII bytes at a time.
    if (end - p >= 8) {
      std::uint64_t word;
      std::memcpy(&word, p, 8);
      if ((word & 0x8080808080808080ULL) == 0) {
        p += 8;
        continue;
      }
    }
    unsigned char c = *p;
    if (c < 0x80) {
      ++p;
      continue;
    }
    std::size_t len;
    std::uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;  // continuation byte, overlong lead (C0, C1) or F5..FF
    }
    if (static_cast<std::size_t>(end - p) < len) return false;
    for (std::size_t i = 1; i < len; ++i) {
      if ((p[i] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;  // overlong, out of range, or a surrogate
    p += len;
  }
  return true;
}

std::uint64_t parse_header_length(const void* prefix, std::uint64_t available,
                                  const std::string& file) {
  if (available < kHeaderPrefixSize)
    throw Error(ErrorCode::HeaderTooSmall, file, "",
                "file is " + std::to_string(available) +
                    " bytes, too small to hold the 8-byte header length");
  const auto* b = static_cast<const unsigned char*>(prefix);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | b[i];
  if (n > kMaxHeaderSize)
    throw Error(ErrorCode::HeaderTooLarge, file, "",
                "header length " + std::to_string(n) + " exceeds the limit of " +
                    std::to_string(kMaxHeaderSize) + " bytes");
  if (n > available - kHeaderPrefixSize)
    throw Error(ErrorCode::InvalidHeaderLength, file, "",
                "header length " + std::to_string(n) + " runs past the end of the file (" +
                    std::to_string(available - kHeaderPrefixSize) +
                    " bytes follow the length)");
  return n;
}

namespace {

using json = nlohmann::json;

// Builds the tensor table from SAX events. Returning false stops the parser;
// the first error is kept and thrown by the caller.
class HeaderBuilder final : public nlohmann::json_sax<json> {
 public:
  explicit HeaderBuilder(const std::string& file) : file_(file) {}

  std::vector<TensorInfo> tensors;
  Metadata metadata;
  bool has_metadata = false;
  std::optional<Error> error;

  bool null() override { return scalar(Scalar::Null); }
  bool boolean(bool) override { return scalar(Scalar::Other); }
  // The parser reports every literal written with a minus sign here, "-0"
  // included, and every other integer as unsigned: all of these are negative
  // numbers, which the reference refuses as sizes and offsets.
  bool number_integer(number_integer_t v) override {
    if (ignored()) return true;
    return fail(ErrorCode::InvalidHeaderDeserialization,
                "negative number " + std::string(v == 0 ? "-0" : std::to_string(v)) + " in " + where());
  }
  bool number_unsigned(number_unsigned_t v) override { return number(v); }
  bool number_float(number_float_t, const string_t& s) override {
    if (ignored()) return true;
    return fail(ErrorCode::InvalidHeaderDeserialization,
                "expected a non-negative integer below 2^64 in " + where() + ", found " + s);
  }
  bool string(string_t& s) override {
    if (skip_depth_ > 0) return true;
    switch (state_) {
      case State::Metadata:
        metadata.emplace(std::move(meta_key_), std::move(s));
        return true;
      case State::Entry:
        if (field_ == Field::Dtype) {
          auto dtype = parse_dtype(s);
          if (!dtype)
            return fail(ErrorCode::InvalidHeaderDeserialization,
                        "unknown dtype \"" + s + "\"", current().name);
          current().dtype = *dtype;
          return true;
        }
        if (field_ == Field::Other) return true;
        break;
      default:
        break;
    }
    return scalar(Scalar::Other);
  }
  bool binary(binary_t&) override { return scalar(Scalar::Other); }

  bool start_object(std::size_t) override {
    if (!enter()) return false;
    if (skip_depth_ > 0) return ++skip_depth_, true;
    switch (state_) {
      case State::Start:
        state_ = State::Top;
        return true;
      case State::Top:
        if (top_key_ == kMetadataKey) {
          if (metadata_seen_) return duplicate_metadata();
          metadata_seen_ = has_metadata = true;
          state_ = State::Metadata;
          return true;
        }
        tensors.emplace_back();
        tensors.back().name = std::move(top_key_);
        seen_ = 0;
        state_ = State::Entry;
        return true;
      case State::Entry:
        if (field_ == Field::Other) return skip_depth_ = 1, true;
        break;
      default:
        break;
    }
    return unexpected("an object");
  }
  bool end_object() override {
    --depth_;
    if (skip_depth_ > 0) return --skip_depth_, true;
    switch (state_) {
      case State::Top:
        state_ = State::Done;
        return true;
      case State::Metadata:
        state_ = State::Top;
        return true;
      case State::Entry: {
        static const char* const kNames[] = {"dtype", "shape", "data_offsets"};
        for (unsigned f = 0; f < 3; ++f)
          if (!(seen_ & (1u << f)))
            return fail(ErrorCode::InvalidHeaderDeserialization,
                        std::string("missing field \"") + kNames[f] + "\"", current().name);
        state_ = State::Top;
        return true;
      }
      default:
        return unexpected("the end of an object");
    }
  }
  bool start_array(std::size_t) override {
    if (!enter()) return false;
    if (skip_depth_ > 0) return ++skip_depth_, true;
    if (state_ == State::Entry) {
      switch (field_) {
        case Field::Shape: state_ = State::Shape; return true;
        case Field::Offsets: state_ = State::Offsets; offsets_count_ = 0; return true;
        case Field::Other: skip_depth_ = 1; return true;
        default: break;
      }
    }
    return unexpected("an array");
  }
  bool end_array() override {
    --depth_;
    if (skip_depth_ > 0) return --skip_depth_, true;
    if (state_ == State::Shape) {
      state_ = State::Entry;
      return true;
    }
    if (state_ == State::Offsets) {
      if (offsets_count_ != 2)
        return fail(ErrorCode::InvalidHeaderDeserialization,
                    "data_offsets must hold exactly 2 integers, found " +
                        std::to_string(offsets_count_),
                    current().name);
      state_ = State::Entry;
      return true;
    }
    return unexpected("the end of an array");
  }
  bool key(string_t& k) override {
    if (skip_depth_ > 0) return true;
    switch (state_) {
      case State::Top:
        top_key_ = std::move(k);
        return true;
      case State::Metadata:
        if (metadata.count(k))
          return fail(ErrorCode::DuplicateKey, "metadata key \"" + k + "\" appears twice");
        meta_key_ = std::move(k);
        return true;
      case State::Entry: {
        unsigned bit = 0;
        if (k == "dtype") field_ = Field::Dtype, bit = 1;
        else if (k == "shape") field_ = Field::Shape, bit = 2;
        else if (k == "data_offsets") field_ = Field::Offsets, bit = 4;
        else field_ = Field::Other;
        if (bit) {
          if (seen_ & bit)
            return fail(ErrorCode::DuplicateKey, "field \"" + k + "\" appears twice",
                        current().name);
          seen_ |= bit;
        }
        return true;
      }
      default:
        return unexpected("a key");
    }
  }

  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& ex) override {
    if (!error) {
      // nlohmann's message starts with "[json.exception.parse_error.101] ".
      std::string what = ex.what();
      auto cut = what.find("] ");
      if (cut != std::string::npos) what = what.substr(cut + 2);
      error.emplace(ErrorCode::InvalidHeaderDeserialization, file_, "",
                    "header is not valid JSON (byte " + std::to_string(position) + "): " + what);
    }
    return false;
  }

 private:
  enum class State { Start, Top, Metadata, Entry, Shape, Offsets, Done };
  enum class Field { None, Dtype, Shape, Offsets, Other };
  enum class Scalar { Null, Other };

  TensorInfo& current() { return tensors.back(); }

  // Inside a value the format does not define: an unknown field of a tensor
  // entry, which the reference ignores whatever it holds, or anything nested in one.
  bool ignored() const {
    return skip_depth_ > 0 || (state_ == State::Entry && field_ == Field::Other);
  }

  std::string where() const {
    switch (state_) {
      case State::Shape: return "shape of tensor '" + tensors.back().name + "'";
      case State::Offsets: return "data_offsets of tensor '" + tensors.back().name + "'";
      default: return "the header";
    }
  }

  bool enter() {
    if (++depth_ > kMaxJsonDepth)
      return fail(ErrorCode::InvalidHeaderDeserialization,
                  "JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    return true;
  }

  bool number(std::uint64_t v) {
    if (ignored()) return true;
    if (state_ == State::Shape) {
      if (current().shape.size() == kMaxRank)
        return fail(ErrorCode::LimitExceeded,
                    "rank above the limit of " + std::to_string(kMaxRank), current().name);
      current().shape.push_back(v);
      return true;
    }
    if (state_ == State::Offsets) {
      if (offsets_count_ == 0) current().begin = v;
      if (offsets_count_ == 1) current().end = v;
      if (++offsets_count_ > 2)
        return fail(ErrorCode::InvalidHeaderDeserialization,
                    "data_offsets must hold exactly 2 integers", current().name);
      return true;
    }
    return unexpected("a number");
  }

  bool scalar(Scalar kind) {
    if (ignored()) return true;
    if (state_ == State::Top && top_key_ == kMetadataKey && kind == Scalar::Null) {
      if (metadata_seen_) return duplicate_metadata();
      metadata_seen_ = true;
      return true;  // MLX writes "__metadata__": null
    }
    return unexpected(kind == Scalar::Null ? "null" : "a scalar");
  }

  bool unexpected(const std::string& what) {
    std::string detail = "unexpected " + what + " in ";
    std::string tensor;
    switch (state_) {
      case State::Start: detail += "place of the header object"; break;
      case State::Top:
        if (top_key_ == kMetadataKey) {
          detail += "__metadata__ (must be an object of strings or null)";
        } else {
          detail += "the header (each tensor entry must be an object)";
          tensor = top_key_;
        }
        break;
      case State::Metadata:
        detail += "__metadata__: the value of \"" + meta_key_ + "\" must be a string";
        break;
      case State::Entry:
        detail += field_ == Field::Dtype ? "dtype (must be a string)"
                  : field_ == Field::Shape ? "shape (must be an array of integers)"
                  : "data_offsets (must be an array of 2 integers)";
        tensor = current().name;
        break;
      case State::Shape:
      case State::Offsets:
        detail += where();
        tensor = current().name;
        break;
      case State::Done: detail += "the header after its end"; break;
    }
    return fail(ErrorCode::InvalidHeaderDeserialization, detail, tensor);
  }

  bool duplicate_metadata() {
    return fail(ErrorCode::DuplicateKey, "\"__metadata__\" appears twice in the header");
  }

  bool fail(ErrorCode code, const std::string& detail, const std::string& tensor = "") {
    if (!error) error.emplace(code, file_, tensor, detail);
    return false;
  }

  const std::string& file_;
  State state_ = State::Start;
  Field field_ = Field::None;
  unsigned seen_ = 0;
  bool metadata_seen_ = false;
  unsigned offsets_count_ = 0;
  std::size_t depth_ = 0;
  std::size_t skip_depth_ = 0;
  std::string top_key_;
  std::string meta_key_;
};

}  // namespace

Header parse_header(std::string_view text, std::uint64_t data_size, const std::string& file) {
  if (!detail::is_valid_utf8(text))
    throw Error(ErrorCode::InvalidHeader, file, "", "header is not valid UTF-8");
  if (text.size() >= 3 && static_cast<unsigned char>(text[0]) == 0xEF &&
      static_cast<unsigned char>(text[1]) == 0xBB && static_cast<unsigned char>(text[2]) == 0xBF)
    throw Error(ErrorCode::InvalidHeader, file, "", "header starts with a byte-order mark");

  // JSON has no raw NUL (control characters in strings must be escaped), and
  // the JSON reader would take one for the end of input, ignoring the rest.
  if (auto nul = text.find('\0'); nul != std::string_view::npos)
    throw Error(ErrorCode::InvalidHeaderDeserialization, file, "",
                "header holds a NUL byte at offset " + std::to_string(nul) +
                    " (pad headers with spaces)");

  HeaderBuilder builder(file);
  bool ok = json::sax_parse(text.begin(), text.end(), &builder, json::input_format_t::json,
                            /*strict=*/true, /*ignore_comments=*/false);
  if (builder.error) throw *builder.error;
  if (!ok)
    throw Error(ErrorCode::InvalidHeaderDeserialization, file, "", "header is not valid JSON");

  Header h;
  h.tensors_ = std::move(builder.tensors);
  h.metadata_ = std::move(builder.metadata);
  h.has_metadata_ = builder.has_metadata;
  h.header_size_ = text.size();
  h.data_size_ = data_size;
  auto& tensors = h.tensors_;
  if (tensors.size() > std::numeric_limits<std::uint32_t>::max())
    throw Error(ErrorCode::LimitExceeded, file, "", "more than 2^32 tensors");
  // File order: by (begin, end); ties keep header order so errors are stable.
  // Writers emit names sorted and offsets in order, so both sorts below are
  // skipped for almost every file (a header of 100,000 tensors spends most of
  // its parse time sorting otherwise).
  const std::size_t n = tensors.size();
  const auto by_offset = [](const TensorInfo& a, const TensorInfo& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  };
  bool names_ascending = true;  // strictly: also proves the names unique
  for (std::size_t i = 1; i < n && names_ascending; ++i) names_ascending = tensors[i - 1].name < tensors[i].name;
  // position[j]: where the tensor now at j stood in the header.
  std::vector<std::uint32_t> position(n);
  for (std::uint32_t i = 0; i < n; ++i) position[i] = i;
  if (!std::is_sorted(tensors.begin(), tensors.end(), by_offset)) {
    std::stable_sort(position.begin(), position.end(),
                     [&](std::uint32_t a, std::uint32_t b) { return by_offset(tensors[a], tensors[b]); });
    std::vector<TensorInfo> ordered;
    ordered.reserve(n);
    for (std::uint32_t i : position) ordered.push_back(std::move(tensors[i]));
    tensors = std::move(ordered);
  }

  // Names: unique, and never the metadata key.
  h.by_name_.resize(n);
  if (names_ascending) {
    for (std::uint32_t j = 0; j < n; ++j) h.by_name_[position[j]] = j;
  } else {
    for (std::uint32_t i = 0; i < n; ++i) h.by_name_[i] = i;
    std::sort(h.by_name_.begin(), h.by_name_.end(),
              [&](std::uint32_t a, std::uint32_t b) { return tensors[a].name < tensors[b].name; });
    for (std::size_t i = 1; i < n; ++i)
      if (tensors[h.by_name_[i]].name == tensors[h.by_name_[i - 1]].name)
        throw Error(ErrorCode::DuplicateKey, file, tensors[h.by_name_[i]].name,
                    "the name appears twice in the header");
  }

  // The reference's single walk over the buffer, in file order.
  std::uint64_t start = 0;
  for (const TensorInfo& t : tensors) {
    if (t.begin != start || t.end < t.begin)
      throw Error(ErrorCode::InvalidOffset, file, t.name,
                  "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                      "] do not start where the previous tensor ends (byte " +
                      std::to_string(start) + ") or are reversed");
    std::uint64_t bits = 0;
    if (!checked_numel_bits(t.shape, dtype_bits(t.dtype), bits))
      throw Error(ErrorCode::ValidationOverflow, file, t.name,
                  "size of the shape overflows 64 bits");
    if (bits % 8 != 0)
      throw Error(ErrorCode::MisalignedSlice, file, t.name,
                  "holds " + std::to_string(bits) + " bits of " +
                      std::string(dtype_name(t.dtype)) + ", not a whole number of bytes");
    if (t.end - t.begin != bits / 8)
      throw Error(ErrorCode::TensorInvalidInfo, file, t.name,
                  "byte range holds " + std::to_string(t.end - t.begin) + " bytes but " +
                      std::string(dtype_name(t.dtype)) + " of that shape needs " +
                      std::to_string(bits / 8));
    start = t.end;
  }
  if (start != data_size)
    throw Error(ErrorCode::MetadataIncompleteBuffer, file, "",
                "tensors cover " + std::to_string(start) + " bytes but the data buffer holds " +
                    std::to_string(data_size));
  return h;
}

Header parse_header(const void* data, std::size_t size, const std::string& file) {
  std::uint64_t n = parse_header_length(data, size, file);
  const char* json_begin = static_cast<const char*>(data) + kHeaderPrefixSize;
  return parse_header(std::string_view(json_begin, n), size - kHeaderPrefixSize - n, file);
}

}  // namespace safetensors
