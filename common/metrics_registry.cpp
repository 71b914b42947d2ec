// The metrics registry, snapshot queries and the Prometheus text exposition.
#include "common/metrics_registry.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <variant>

namespace llmq::metrics {

std::string_view kind_name(Kind k) {
    switch (k) {
    case Kind::counter: return "counter";
    case Kind::gauge: return "gauge";
    case Kind::histogram: return "histogram";
    }
    return "untyped";
}

std::optional<Kind> parse_kind(std::string_view name) {
    for (Kind k : {Kind::counter, Kind::gauge, Kind::histogram})
        if (kind_name(k) == name) return k;
    return std::nullopt;
}

// ---- snapshot queries ------------------------------------------------------------

namespace {
template <class Range>
bool same_labels(const std::vector<std::string>& have, const Range& want) {
    if (have.size() != want.size()) return false;
    return std::equal(have.begin(), have.end(), want.begin(),
                      [](const std::string& a, const auto& b) { return std::string_view(a) == std::string_view(b); });
}
}  // namespace

const Series* Family::find(std::initializer_list<std::string_view> labels) const {
    for (const auto& s : series)
        if (same_labels(s.labels, labels)) return &s;
    return nullptr;
}
const Series* Family::find(const std::vector<std::string>& labels) const {
    for (const auto& s : series)
        if (s.labels == labels) return &s;
    return nullptr;
}
double Family::sum() const {
    double total = 0;
    for (const auto& s : series) total += s.value;
    return total;
}
Histogram Family::merged() const {
    Histogram h;
    for (const auto& s : series) h.merge(s.hist);
    return h;
}
int Family::label_index(std::string_view name) const {
    for (size_t i = 0; i < info.labels.size(); ++i)
        if (info.labels[i] == name) return static_cast<int>(i);
    return -1;
}

const Family* find(const Snapshot& s, std::string_view name) {
    for (const auto& f : s)
        if (f.info.name == name) return &f;
    return nullptr;
}
Family* find(Snapshot& s, std::string_view name) {
    for (auto& f : s)
        if (f.info.name == name) return &f;
    return nullptr;
}
double value(const Snapshot& s, std::string_view name, std::initializer_list<std::string_view> labels) {
    const Family* f = find(s, name);
    const Series* x = f ? f->find(labels) : nullptr;
    return x ? x->value : 0;
}
double sum(const Snapshot& s, std::string_view name) {
    const Family* f = find(s, name);
    return f ? f->sum() : 0;
}
Histogram histogram(const Snapshot& s, std::string_view name, std::initializer_list<std::string_view> labels) {
    const Family* f = find(s, name);
    if (!f) return {};
    if (labels.size() == 0) return f->merged();
    const Series* x = f->find(labels);
    return x ? x->hist : Histogram{};
}

namespace {
bool name_char(char c, bool first) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' || (!first && c >= '0' && c <= '9');
}
bool valid_name(std::string_view n) {
    if (n.empty() || n.size() > 200) return false;
    for (size_t i = 0; i < n.size(); ++i)
        if (!name_char(n[i], i == 0)) return false;
    return true;
}
}  // namespace

std::optional<std::string> check_info(const FamilyInfo& info) {
    if (!valid_name(info.name)) return "family name '" + info.name.substr(0, 64) + "' is not a Prometheus name";
    if (!info.total.empty() && !valid_name(info.total))
        return info.name + ": total name '" + info.total.substr(0, 64) + "' is not a Prometheus name";
    if (!info.total.empty() && info.kind == Kind::gauge) return info.name + ": a gauge has no total";
    if (info.labels.size() > kMaxLabels) return info.name + ": more than " + std::to_string(kMaxLabels) + " labels";
    for (const auto& l : info.labels)
        if (!valid_name(l) || l.find(':') != std::string::npos || l == "le" || l == "quantile")
            return info.name + ": label name '" + l.substr(0, 64) + "' is not allowed";
    if (info.max_series < 1 || info.max_series > kMaxSeriesLimit)
        return info.name + ": max_series must be 1.." + std::to_string(kMaxSeriesLimit);
    if (!(info.scale > 0) || !std::isfinite(info.scale)) return info.name + ": scale must be a positive number";
    if (info.help.size() > 1024) return info.name + ": help longer than 1024 bytes";
    return std::nullopt;
}

// ---- live families -----------------------------------------------------------------

template <class Cell>
template <class Range>
Cell& FamilyOf<Cell>::cell(const Range& values) {
    if (values.size() != info_.labels.size())
        throw std::logic_error(info_.name + ": " + std::to_string(values.size()) + " label values for " +
                               std::to_string(info_.labels.size()) + " labels");
    std::lock_guard lock(mu_);
    for (auto& [labels, c] : cells_)
        if (same_labels(labels, values)) return *c;
    std::vector<std::string> labels(values.begin(), values.end());
    if (cells_.size() + 1 >= info_.max_series && !labels.empty()) {
        // The last place is the overflow series'.
        std::vector<std::string> other(labels.size(), std::string(kOverflowLabel));
        for (auto& [l, c] : cells_)
            if (l == other) return *c;
        labels = std::move(other);
    }
    cells_.emplace_back(std::move(labels), std::make_unique<Cell>());
    return *cells_.back().second;
}

template <class Cell>
Cell& FamilyOf<Cell>::with(std::initializer_list<std::string_view> values) {
    return cell(values);
}
template <class Cell>
Cell& FamilyOf<Cell>::with(const std::vector<std::string>& values) {
    return cell(values);
}
template <class Cell>
void FamilyOf<Cell>::remove(const std::vector<std::string>& values) {
    std::lock_guard lock(mu_);
    std::erase_if(cells_, [&](const auto& e) { return e.first == values; });
}
template <class Cell>
void FamilyOf<Cell>::clear() {
    std::lock_guard lock(mu_);
    cells_.clear();
}
template <class Cell>
void FamilyOf<Cell>::collect(Family& out) const {
    out.info = info_;
    std::lock_guard lock(mu_);
    out.series.reserve(cells_.size());
    for (const auto& [labels, c] : cells_) {
        Series s;
        s.labels = labels;
        if constexpr (std::is_same_v<Cell, HistogramCell>) s.hist = c->read();
        else s.value = static_cast<double>(c->value());
        out.series.push_back(std::move(s));
    }
}

template class FamilyOf<Counter>;
template class FamilyOf<Gauge>;
template class FamilyOf<HistogramCell>;

struct Registry::Entry {
    template <class F>
    Entry(std::in_place_type_t<F> t, FamilyInfo info) : family(t, std::move(info)) {}
    std::variant<CounterFamily, GaugeFamily, HistogramFamily> family;
    const FamilyInfo& info() const {
        return std::visit([](const auto& f) -> const FamilyInfo& { return f.info(); }, family);
    }
};

Registry::Registry() = default;
Registry::~Registry() = default;

void Registry::add(std::unique_ptr<Entry> e) {
    const FamilyInfo& info = e->info();
    if (auto bad = check_info(info)) throw std::logic_error("metrics: " + *bad);
    for (const auto& f : families_)
        if (f->info().name == info.name) throw std::logic_error("metrics: family " + info.name + " declared twice");
    families_.push_back(std::move(e));
}

CounterFamily& Registry::counter(FamilyInfo info) {
    info.kind = Kind::counter;
    add(std::unique_ptr<Entry>(new Entry(std::in_place_type<CounterFamily>, std::move(info))));
    return std::get<CounterFamily>(families_.back()->family);
}
GaugeFamily& Registry::gauge(FamilyInfo info) {
    info.kind = Kind::gauge;
    add(std::unique_ptr<Entry>(new Entry(std::in_place_type<GaugeFamily>, std::move(info))));
    return std::get<GaugeFamily>(families_.back()->family);
}
HistogramFamily& Registry::histogram(FamilyInfo info) {
    info.kind = Kind::histogram;
    add(std::unique_ptr<Entry>(new Entry(std::in_place_type<HistogramFamily>, std::move(info))));
    return std::get<HistogramFamily>(families_.back()->family);
}
Counter& Registry::counter(std::string name, std::string help) {
    return counter(FamilyInfo{.name = std::move(name), .help = std::move(help)}).only();
}
Gauge& Registry::gauge(std::string name, std::string help) {
    return gauge(FamilyInfo{.name = std::move(name), .help = std::move(help)}).only();
}

void Registry::on_collect(std::function<void()> f) { collectors_.push_back(std::move(f)); }

Snapshot Registry::snapshot() const {
    for (const auto& f : collectors_) f();
    Snapshot s;
    s.reserve(families_.size());
    for (const auto& e : families_) {
        s.emplace_back();
        std::visit([&](const auto& f) { f.collect(s.back()); }, e->family);
    }
    return s;
}

// ---- gathering the families of several sources -------------------------------------

namespace {
bool same_shape(const FamilyInfo& a, const FamilyInfo& b) {
    return a.kind == b.kind && a.labels == b.labels && a.scale == b.scale;
}
}  // namespace

Family* Gathered::total_for(const FamilyInfo& info) {
    if (Family* t = find(totals_, info.total)) return same_shape(t->info, info) ? t : nullptr;
    if (totals_.size() >= kMaxFamilies) return nullptr;
    Family t;
    t.info = FamilyInfo{.name = info.total,
                        .kind = info.kind,
                        .help = info.total_help,
                        .labels = info.labels,
                        .scale = info.scale,
                        .max_series = info.max_series};
    totals_.push_back(std::move(t));
    return &totals_.back();
}

void Gathered::add_increments(const Snapshot& now, const Snapshot& before) {
    for (const auto& f : now) {
        if (f.info.total.empty()) continue;
        Family* total = total_for(f.info);
        if (!total) continue;  // another source declared that total differently: not mixed
        const Family* prev = find(before, f.info.name);
        if (prev && !same_shape(prev->info, f.info)) prev = nullptr;
        for (const auto& s : f.series) {
            const Series* p = prev ? prev->find(s.labels) : nullptr;
            auto it = std::find_if(total->series.begin(), total->series.end(),
                                   [&](const Series& x) { return x.labels == s.labels; });
            Series* t = it == total->series.end() ? nullptr : &*it;
            if (!t) {
                if (total->series.size() >= total->info.max_series) continue;
                total->series.push_back(Series{.labels = s.labels});
                t = &total->series.back();
            }
            if (f.info.kind == Kind::histogram) {
                Histogram inc = s.hist;
                if (p && !inc.subtract(p->hist)) inc = s.hist;  // the source restarted
                t->hist.merge(inc);
            } else {
                const double before_v = p ? p->value : 0;
                t->value += s.value >= before_v ? s.value - before_v : s.value;
            }
        }
    }
}

void Gathered::report(const std::string& source, Snapshot snap) {
    auto it = std::find_if(sources_.begin(), sources_.end(), [&](const auto& e) { return e.first == source; });
    static const Snapshot kNone;
    add_increments(snap, it == sources_.end() ? kNone : it->second.last);
    if (it == sources_.end()) {
        sources_.emplace_back(source, Source{});
        it = std::prev(sources_.end());
    }
    it->second.last = std::move(snap);
    it->second.present = true;
    it->second.order = ++reports_;
}

void Gathered::forget(const std::string& source) {
    for (auto& [name, s] : sources_)
        if (name == source) s.present = false;
    size_t absent = 0;
    for (const auto& e : sources_) absent += e.second.present ? 0 : 1;
    while (absent > kMaxRememberedSources) {
        auto oldest = sources_.end();
        for (auto it = sources_.begin(); it != sources_.end(); ++it)
            if (!it->second.present && (oldest == sources_.end() || it->second.order < oldest->second.order))
                oldest = it;
        sources_.erase(oldest);
        --absent;
    }
}

void Gathered::append_to(Snapshot& out) const {
    const size_t own = out.size();
    auto taken = [&](std::string_view name) {
        return std::any_of(out.begin(), out.begin() + static_cast<ptrdiff_t>(own),
                           [&](const Family& f) { return f.info.name == name; });
    };
    for (const auto& [source, s] : sources_) {
        if (!s.present) continue;
        for (const auto& f : s.last) {
            if (taken(f.info.name)) continue;
            Family* merged = find(out, f.info.name);
            if (!merged) {
                FamilyInfo info = f.info;
                info.labels.insert(info.labels.begin(), label_);
                info.total.clear();
                info.total_help.clear();
                info.max_series = kMaxSeriesLimit;
                out.push_back(Family{.info = std::move(info)});
                merged = &out.back();
            } else if (merged->info.kind != f.info.kind || merged->info.labels.size() != f.info.labels.size() + 1) {
                continue;  // declared differently by another source: not mixed
            }
            for (const auto& x : f.series) {
                if (merged->series.size() >= kMaxSeriesLimit) break;
                Series copy = x;
                copy.labels.insert(copy.labels.begin(), source);
                merged->series.push_back(std::move(copy));
            }
        }
    }
    for (const auto& t : totals_)
        if (!taken(t.info.name) && !find(out, t.info.name)) out.push_back(t);
}

// ---- the text exposition -------------------------------------------------------------

std::string escape_label_value(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        if (c == '\\') out += "\\\\";
        else if (c == '"') out += "\\\"";
        else if (c == '\n') out += "\\n";
        else out.push_back(c);
    }
    return out;
}

std::string format_value(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    char buf[64];
    if (v == std::floor(v) && std::fabs(v) < 9.007199254740992e15) {
        auto r = std::to_chars(buf, buf + sizeof buf, static_cast<int64_t>(v));
        return std::string(buf, r.ptr);
    }
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    return std::string(buf, r.ptr);
}

std::string format_bound(int i, double scale) {
    // The R10 bounds have at most three significant digits: round the scaled
    // value to three, so that 3.15 µs reads "3.15e-06", not "3.1499999999999997e-06".
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", Histogram::upper_bound(i) * scale);
    return format_value(std::strtod(buf, nullptr));
}

namespace {

// The bucket bounds' text for one scale, made once per scale.
const std::vector<std::string>& bounds_text(double scale) {
    static std::mutex mu;
    static std::vector<std::pair<double, std::vector<std::string>>> cache;
    std::lock_guard lock(mu);
    for (const auto& [s, v] : cache)
        if (s == scale) return v;
    std::vector<std::string> v;
    for (int i = 0; i < Histogram::kBounds; ++i) v.push_back(format_bound(i, scale));
    cache.emplace_back(scale, std::move(v));
    return cache.back().second;
}

// `name{a="x",b="y"` + extra label, without the closing brace.
class Line {
public:
    Line(std::string& out, std::string_view name, const FamilyInfo& info, const Series& s) : out_(out) {
        prefix_ = name;
        for (size_t i = 0; i < info.labels.size() && i < s.labels.size(); ++i) {
            labels_ += labels_.empty() ? "" : ",";
            labels_ += info.labels[i];
            labels_ += "=\"";
            labels_ += escape_label_value(s.labels[i]);
            labels_ += '"';
        }
    }
    void sample(std::string_view suffix, std::string_view value, std::string_view extra = {}) {
        out_ += prefix_;
        out_ += suffix;
        if (!labels_.empty() || !extra.empty()) {
            out_ += '{';
            out_ += labels_;
            if (!labels_.empty() && !extra.empty()) out_ += ',';
            out_ += extra;
            out_ += '}';
        }
        out_ += ' ';
        out_ += value;
        out_ += '\n';
    }

private:
    std::string& out_;
    std::string prefix_, labels_;
};

void render_histogram(std::string& out, const Family& f, const Series& s) {
    Line line(out, f.info.name, f.info, s);
    const Histogram& h = s.hist;
    if (f.info.summary) {
        for (const char* q : {"0.5", "0.9", "0.99"})
            line.sample("", format_value(h.count() ? h.quantile(std::strtod(q, nullptr)) * f.info.scale : std::nan("")),
                        std::string("quantile=\"") + q + "\"");
    } else {
        const auto& bounds = bounds_text(f.info.scale);
        uint64_t cumulative = 0;
        for (int i = 0; i < Histogram::kBounds; ++i) {
            cumulative += h.buckets()[static_cast<size_t>(i)];
            line.sample("_bucket", std::to_string(cumulative), "le=\"" + bounds[static_cast<size_t>(i)] + "\"");
        }
        line.sample("_bucket", std::to_string(h.count()), "le=\"+Inf\"");
    }
    line.sample("_sum", format_value(static_cast<double>(h.sum()) * f.info.scale));
    line.sample("_count", std::to_string(h.count()));
}

}  // namespace

void render_prometheus(const Snapshot& snap, std::string& out) {
    for (const auto& f : snap) {
        const bool hist = f.info.kind == Kind::histogram;
        out += "# HELP ";
        out += f.info.name;
        out += ' ';
        for (char c : f.info.help) {  // HELP escapes only backslash and newline
            if (c == '\\') out += "\\\\";
            else if (c == '\n') out += "\\n";
            else out += c;
        }
        out += "\n# TYPE ";
        out += f.info.name;
        out += ' ';
        out += hist && f.info.summary ? "summary" : kind_name(f.info.kind);
        out += '\n';
        for (const auto& s : f.series) {
            if (hist) render_histogram(out, f, s);
            else Line(out, f.info.name, f.info, s).sample("", format_value(s.value * f.info.scale));
        }
    }
}

}  // namespace llmq::metrics
