// A thin SQLite wrapper: statements with bound parameters only (no SQL built from
// input), transactions, and versioned migrations. A Database is not thread-safe;
// callers serialize access (one connection per thread or a mutex).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shared/core/handles.h"
#include "shared/core/status.h"

namespace certfleet::shared {

class Statement {
 public:
  Statement() = default;
  explicit Statement(sqlite3_stmt* stmt) : stmt_(stmt) {}

  Statement& Bind(int index, std::string_view text);
  Statement& Bind(int index, int64_t value);
  Statement& BindNull(int index);
  Statement& BindOptional(int index, const std::optional<std::string>& text);

  // true when a row is ready, false when done. kAlreadyExists on a constraint
  // violation, kUnavailable when the database is busy.
  Result<bool> Step();
  // Steps to completion (for statements that return no rows).
  Status Run();
  Status Reset();

  int64_t Int(int col) const;
  std::string Text(int col) const;
  bool IsNull(int col) const;

 private:
  SqliteStmtPtr stmt_;
  Status bind_error_;
};

class Database {
 public:
  struct Options {
    bool read_only = false;
    // synchronous=FULL: a committed transaction survives power loss.
    bool durable = true;
    int busy_timeout_ms = 5000;
  };

  // Opens (creating unless read-only) with WAL journaling and foreign keys on.
  static Result<Database> Open(const std::string& path, const Options& options);
  static Result<Database> Open(const std::string& path) { return Open(path, Options{}); }

  Status Exec(std::string_view sql);
  Result<Statement> Prepare(std::string_view sql);
  int64_t LastInsertId() const;
  int Changes() const;

  // Migrations: migrations[i] brings the schema from version i to i+1 (PRAGMA
  // user_version), each in its own transaction. A database newer than the code is
  // kFailedPrecondition.
  Status Migrate(const std::vector<std::string_view>& migrations);
  Result<int> SchemaVersion();

  sqlite3* raw() const { return db_.get(); }

 private:
  SqlitePtr db_;
};

// RAII transaction: BEGIN IMMEDIATE on creation, ROLLBACK unless Commit() succeeded.
class Transaction {
 public:
  static Result<Transaction> Begin(Database& db);
  Transaction(Transaction&& other) noexcept : db_(std::exchange(other.db_, nullptr)) {}
  Transaction& operator=(Transaction&&) = delete;
  ~Transaction();
  Status Commit();

 private:
  explicit Transaction(Database* db) : db_(db) {}
  Database* db_;
};

Status SqliteStatus(sqlite3* db, int rc, std::string_view what);

}  // namespace certfleet::shared
