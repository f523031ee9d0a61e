// audit-bench: the audit engine over a synthetic fleet (see README.md).
//
//   audit-bench load --db PATH --count N   bulk-loads N certificates (all states and ages)
//   audit-bench run  --db PATH --reports DIR
//                                          times one plain full scan of the certificates
//                                          table (the reference), then a full audit
//
// Rows go in through the registry's schema (the same migrations, constraints, indexes
// and triggers), in large transactions, with key facts as issuance would record them.
// Each phase prints one key=value line; peak_rss_kb is getrusage's ru_maxrss of that
// process, so `run` shows the audit's own memory.
#include <sys/resource.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>

#include "companion/audit.h"
#include "companion/registry.h"
#include "shared/core/clock.h"
#include "shared/core/filesystem.h"
#include "shared/core/log.h"
#include "shared/sqlite/sqlite.h"

namespace {

using certfleet::shared::Database;
using certfleet::shared::Statement;
using certfleet::shared::Transaction;
namespace cf = certfleet;

// 2026-01-01T00:00:00Z: the fleet is laid out around this instant.
constexpr int64_t kNow = 1767225600;
constexpr int64_t kDay = 86400;

int64_t PeakRssKb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

std::string CertId(int64_t i) {
  char buf[65];
  std::snprintf(buf, sizeof buf, "%064" PRIx64, static_cast<uint64_t>(static_cast<uint64_t>(i) * 2654435761ULL + 1));
  return buf;
}

// A cheap deterministic spread of i over [0, n).
int64_t Spread(int64_t i, int64_t salt, int64_t n) {
  uint64_t x = static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(salt) * 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 31;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 29;
  return static_cast<int64_t>(x % static_cast<uint64_t>(n));
}

int Load(const std::string& db_path, int64_t count, int pem_bytes) {
  {
    auto reg = cf::companion::OpenSqliteRegistry(db_path, {});  // creates and migrates
    if (!reg) {
      std::fprintf(stderr, "audit-bench: %s\n", reg.error().ToString().c_str());
      return 1;
    }
  }
  Database::Options o;
  o.durable = false;
  auto db = Database::Open(db_path, o);
  if (!db) {
    std::fprintf(stderr, "audit-bench: %s\n", db.error().ToString().c_str());
    return 1;
  }
  const auto start = std::chrono::steady_clock::now();
  const std::string pem(static_cast<size_t>(pem_bytes), 'P');
  auto thing_st = db->Prepare("INSERT INTO things(name, created_at, last_seen_at) VALUES (?1, ?2, ?3)");
  auto cert_st = db->Prepare(
      "INSERT INTO certificates(id, thing_name, serial, subject, not_before, not_after, issued_at, status, source, "
      "superseded_by, superseded_at, pem, status_changed_at, proven_at, retire_at, key_type, key_bits, sig_alg, "
      "sig_hash, roca, activated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'bench', ?9, ?10, ?11, ?12, ?13, ?14, "
      "?15, ?16, ?17, ?18, ?19, ?20)");
  auto rot_st = db->Prepare(
      "INSERT INTO rotation_requests(id, thing_name, reason, created_at, deadline, state, created_by) "
      "VALUES (?1, ?2, 'bench', ?3, ?4, 'PENDING', 'bench')");
  if (!thing_st || !cert_st || !rot_st) {
    std::fprintf(stderr, "audit-bench: prepare failed\n");
    return 1;
  }
  constexpr int64_t kBatch = 50000;
  int64_t i = 0;
  while (i < count) {
    auto tx = Transaction::Begin(*db);
    if (!tx) return 1;
    for (int64_t end = std::min(count, i + kBatch); i < end; ++i) {
      // Groups of 20 certificates: 16 things with their current ACTIVE certificate, then
      // an INACTIVE and a REVOKED predecessor, a superseded but still ACTIVE one, and
      // the current certificate of a 17th thing (REVOKED one time in ten).
      const int64_t slot = i % 20;
      const int64_t group = i / 20;
      const int64_t thing_index = group * 17 + (slot < 16 ? slot : (slot == 19 ? 16 : 0));
      const std::string thing = "gw-" + std::to_string(thing_index);
      const bool current = slot < 16 || slot == 19;
      if (current) {
        // 2% of agents silent for 8-60 days, the rest seen within the week.
        const int64_t seen = Spread(i, 1, 100) < 2 ? 8 + Spread(i, 7, 52) : Spread(i, 7, 7);
        thing_st->Bind(1, thing).Bind(2, kNow - 800 * kDay).Bind(3, kNow - seen * kDay);
        if (!thing_st->Run().ok() || !thing_st->Reset().ok()) return 1;
      }
      const int64_t activated = kNow - Spread(i, 2, 400) * kDay;  // ~9% past the 365-day age threshold
      const int64_t not_after = std::max(kNow - 5 * kDay + Spread(i, 3, 730) * kDay, activated + kDay);  // ~5% within 30 days
      const int64_t q = Spread(i, 4, 10000);
      std::string key_type = "EC";
      int64_t bits = 256;
      std::string sig_hash = "SHA256";
      int64_t roca = 0;
      if (q < 200) { key_type = "RSA"; bits = 2048; }
      else if (q < 250) { key_type = "RSA"; bits = 1024; }
      else if (q < 280) { sig_hash = "SHA1"; }
      else if (q < 281) { key_type = "RSA"; bits = 2048; roca = 1; }
      std::string status = "ACTIVE";
      if (slot == 16) status = "INACTIVE";
      if (slot == 17 || (slot == 19 && Spread(i, 8, 10) == 0)) status = "REVOKED";
      Statement& c = *cert_st;
      c.Bind(1, CertId(i)).Bind(2, thing).Bind(3, std::to_string(i + 1)).Bind(4, "CN=" + thing);
      c.Bind(5, activated - kDay).Bind(6, not_after).Bind(7, activated).Bind(8, status);
      if (current) {
        c.BindNull(9).BindNull(10);
      } else {
        c.Bind(9, CertId(group * 20)).Bind(10, activated + 30 * kDay);  // superseded by the thing's current one
      }
      c.Bind(11, pem).Bind(12, activated).BindNull(13);
      if (slot == 18 && Spread(i, 9, 10) < 8) {
        c.Bind(14, kNow + kDay);  // in its grace window; the rest are leftovers
      } else {
        c.BindNull(14);
      }
      c.Bind(15, key_type).Bind(16, bits).Bind(17, key_type == "EC" ? "ecdsa-with-" + sig_hash : sig_hash + "WithRSA");
      c.Bind(18, sig_hash).Bind(19, roca).Bind(20, activated);
      auto st = c.Run();
      if (!st.ok() || !c.Reset().ok()) {
        std::fprintf(stderr, "audit-bench: row %" PRId64 ": %s\n", i, st.ToString().c_str());
        return 1;
      }
      if (slot == 0 && Spread(i, 5, 100) == 0) {  // 1% of things: a pending rotation, half overdue
        rot_st->Bind(1, CertId(i).substr(32)).Bind(2, thing).Bind(3, kNow - 20 * kDay);
        rot_st->Bind(4, kNow + (Spread(i, 6, 2) == 0 ? -kDay : kDay));
        if (!rot_st->Run().ok() || !rot_st->Reset().ok()) return 1;
      }
    }
    if (!tx->Commit().ok()) return 1;
  }
  std::printf("phase=load certificates=%" PRId64 " load_s=%.2f peak_rss_kb=%" PRId64 "\n", count, Seconds(start),
              PeakRssKb());
  return 0;
}

int Run(const std::string& db_path, const std::string& reports, bool verbose) {
  auto reg = cf::companion::OpenSqliteRegistry(db_path, {});
  auto store = cf::companion::OpenSqliteAuditStore(db_path);
  if (!reg || !store) {
    std::fprintf(stderr, "audit-bench: cannot open %s\n", db_path.c_str());
    return 1;
  }
  // Reference: one plain full scan of the certificates table (every row read).
  auto db = Database::Open(db_path);
  if (!db) return 1;
  int64_t rows = 0;
  const auto scan_start = std::chrono::steady_clock::now();
  {
    auto q = db->Prepare("SELECT COUNT(*) FROM certificates WHERE not_before + issued_at > 0");
    if (!q || !q->Step().value_or(false)) return 1;
    rows = q->Int(0);
  }
  const double scan_s = Seconds(scan_start);

  cf::shared::FakeClock clock(cf::shared::FromUnixSeconds(kNow));
  cf::shared::StderrLogger log(verbose ? cf::shared::LogLevel::kDebug : cf::shared::LogLevel::kWarning);
  cf::companion::AuditEngineOptions options;
  options.config.report_dir = reports;
  cf::companion::AuditEngine engine(options, **reg, **store, cf::shared::PosixFilesystem::Instance(), clock, log);
  const auto start = std::chrono::steady_clock::now();
  auto id = engine.StartAudit({});
  const double audit_s = Seconds(start);
  if (!id) {
    std::fprintf(stderr, "audit-bench: %s\n", id.error().ToString().c_str());
    return 1;
  }
  auto task = engine.GetAuditTask(*id);
  if (!task || !*task || (*task)->status != "COMPLETED") {
    std::fprintf(stderr, "audit-bench: the audit did not complete\n");
    return 1;
  }
  int64_t findings = 0;
  for (const auto& c : (*task)->checks) {
    std::printf("check=%s total=%" PRId64 " non_compliant=%" PRId64 "\n", c.check_name.c_str(), c.total,
                c.non_compliant);
    findings += c.non_compliant;
  }
  std::printf("phase=audit certificates=%" PRId64 " findings=%" PRId64 " audit_s=%.3f scan_s=%.3f "
              "ratio_audit_to_scan=%.2f peak_rss_kb=%" PRId64 "\n",
              rows, findings, audit_s, scan_s, scan_s > 0 ? audit_s / scan_s : 0.0, PeakRssKb());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"audit-bench: the audit engine over a synthetic fleet"};
  app.require_subcommand(1);
  std::string db;
  int64_t count = 100000;
  int pem_bytes = 700;
  std::string reports;
  auto* load = app.add_subcommand("load", "bulk-load a registry");
  load->add_option("--db", db, "registry file (created)")->required();
  load->add_option("--count", count, "certificates")->check(CLI::Range(int64_t{20}, int64_t{100000000}));
  load->add_option("--pem-bytes", pem_bytes, "size of the stored PEM text per row (a real one is ~700)");
  auto* run = app.add_subcommand("run", "time a full audit");
  run->add_option("--db", db, "registry file")->required();
  run->add_option("--reports", reports, "report directory")->required();
  bool verbose = false;
  run->add_flag("--verbose", verbose, "log each check's and phase's time to stderr");
  CLI11_PARSE(app, argc, argv);
  if (*load) return Load(db, count, pem_bytes);
  return Run(db, reports, verbose);
}
