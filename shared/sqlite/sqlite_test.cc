#include "shared/sqlite/sqlite.h"

#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "shared/testing/temp_dir.h"

namespace certfleet::shared {
namespace {

const std::vector<std::string_view> kMigrations = {
    "CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, note TEXT)",
    "CREATE TABLE certs (id TEXT PRIMARY KEY, thing_id INTEGER NOT NULL REFERENCES things(id))",
    "ALTER TABLE things ADD COLUMN created INTEGER NOT NULL DEFAULT 0",
};

class SqliteTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_FALSE(dir_.empty()) << "mkdtemp failed"; }

  Database OpenDb() {
    auto db = Database::Open(path_);
    EXPECT_TRUE(db.has_value()) << db.error().ToString();
    return std::move(*db);
  }

  static int64_t Count(Database& db, std::string_view table) {
    auto st = db.Prepare("SELECT COUNT(*) FROM " + std::string(table));
    EXPECT_TRUE(st.has_value()) << st.error().ToString();
    auto row = st->Step();
    EXPECT_TRUE(row.has_value() && *row);
    return st->Int(0);
  }

  TempDir tmp_;
  const std::string dir_ = tmp_.path();
  const std::string path_ = dir_ + "/registry.db";
};

TEST_F(SqliteTest, OpenCreatesAFreshDatabase) {
  Database db = OpenDb();
  auto version = db.SchemaVersion();
  ASSERT_TRUE(version.has_value());
  EXPECT_EQ(*version, 0);
  EXPECT_EQ(::access(path_.c_str(), F_OK), 0);

  auto mode = db.Prepare("PRAGMA journal_mode");
  ASSERT_TRUE(mode.has_value());
  ASSERT_TRUE(*mode->Step());
  EXPECT_EQ(mode->Text(0), "wal");
  auto fk = db.Prepare("PRAGMA foreign_keys");
  ASSERT_TRUE(fk.has_value());
  ASSERT_TRUE(*fk->Step());
  EXPECT_EQ(fk->Int(0), 1);
}

TEST_F(SqliteTest, OpenMissingReadOnlyFails) {
  Database::Options options;
  options.read_only = true;
  auto db = Database::Open(dir_ + "/missing.db", options);
  ASSERT_FALSE(db.has_value());
  EXPECT_FALSE(db.error().message().empty());
}

TEST_F(SqliteTest, MigrateAppliesVersionsAndIsIdempotent) {
  {
    Database db = OpenDb();
    // Only the first two migrations, as an older program would.
    ASSERT_TRUE(db.Migrate({kMigrations[0], kMigrations[1]}).ok());
    EXPECT_EQ(*db.SchemaVersion(), 2);
  }
  Database db = OpenDb();
  ASSERT_TRUE(db.Migrate(kMigrations).ok());
  EXPECT_EQ(*db.SchemaVersion(), 3);
  ASSERT_TRUE(db.Exec("INSERT INTO things (name, created) VALUES ('gw-1', 5)").ok());

  // Running again changes nothing (an ALTER TABLE ADD COLUMN rerun would fail).
  Status again = db.Migrate(kMigrations);
  ASSERT_TRUE(again.ok()) << again.ToString();
  EXPECT_EQ(*db.SchemaVersion(), 3);
  EXPECT_EQ(Count(db, "things"), 1);
}

TEST_F(SqliteTest, NewerSchemaIsFailedPrecondition) {
  Database db = OpenDb();
  ASSERT_TRUE(db.Migrate(kMigrations).ok());
  Status st = db.Migrate({kMigrations[0], kMigrations[1]});
  EXPECT_EQ(st.code(), Code::kFailedPrecondition) << st.ToString();
  EXPECT_EQ(*db.SchemaVersion(), 3);
}

TEST_F(SqliteTest, FailedMigrationRollsBackThatStep) {
  Database db = OpenDb();
  Status st = db.Migrate({kMigrations[0], "CREATE TABLE x (a INTEGER); THIS IS NOT SQL"});
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("migration 2"), std::string::npos) << st.message();
  EXPECT_EQ(*db.SchemaVersion(), 1);
  // The table created before the error in step 2 was rolled back with it.
  auto stmt = db.Prepare("SELECT COUNT(*) FROM sqlite_master WHERE name = 'x'");
  ASSERT_TRUE(stmt.has_value());
  ASSERT_TRUE(*stmt->Step());
  EXPECT_EQ(stmt->Int(0), 0);
}

TEST_F(SqliteTest, UniqueViolationIsAlreadyExists) {
  Database db = OpenDb();
  ASSERT_TRUE(db.Migrate(kMigrations).ok());
  auto insert = db.Prepare("INSERT INTO things (name, note) VALUES (?1, ?2)");
  ASSERT_TRUE(insert.has_value()) << insert.error().ToString();
  ASSERT_TRUE(insert->Bind(1, std::string_view("gw-1")).BindOptional(2, std::nullopt).Run().ok());
  EXPECT_EQ(db.Changes(), 1);
  int64_t first_id = db.LastInsertId();
  ASSERT_TRUE(insert->Reset().ok());
  Status dup = insert->Bind(1, std::string_view("gw-1")).BindOptional(2, std::optional<std::string>("x")).Run();
  EXPECT_EQ(dup.code(), Code::kAlreadyExists) << dup.ToString();
  EXPECT_EQ(Count(db, "things"), 1);

  // Foreign key violations are constraint errors too.
  Status fk = db.Exec("INSERT INTO certs (id, thing_id) VALUES ('c', 999)");
  EXPECT_EQ(fk.code(), Code::kAlreadyExists) << fk.ToString();

  auto query = db.Prepare("SELECT id, name, note FROM things WHERE name = ?1");
  ASSERT_TRUE(query.has_value());
  query->Bind(1, std::string_view("gw-1"));
  auto row = query->Step();
  ASSERT_TRUE(row.has_value() && *row);
  EXPECT_EQ(query->Int(0), first_id);
  EXPECT_EQ(query->Text(1), "gw-1");
  EXPECT_TRUE(query->IsNull(2));
  EXPECT_EQ(query->Text(2), "");
  auto done = query->Step();
  ASSERT_TRUE(done.has_value());
  EXPECT_FALSE(*done);
}

TEST_F(SqliteTest, BindsArbitraryBytesSafely) {
  Database db = OpenDb();
  ASSERT_TRUE(db.Migrate(kMigrations).ok());
  const std::string nasty = "x'); DROP TABLE things; --";
  auto insert = db.Prepare("INSERT INTO things (name) VALUES (?1)");
  ASSERT_TRUE(insert.has_value());
  ASSERT_TRUE(insert->Bind(1, std::string_view(nasty)).Run().ok());
  auto query = db.Prepare("SELECT name FROM things");
  ASSERT_TRUE(query.has_value());
  ASSERT_TRUE(*query->Step());
  EXPECT_EQ(query->Text(0), nasty);
}

TEST_F(SqliteTest, PrepareErrorIsReported) {
  Database db = OpenDb();
  auto st = db.Prepare("SELEC 1");
  ASSERT_FALSE(st.has_value());
  EXPECT_NE(st.error().message().find("prepare"), std::string::npos);
}

TEST_F(SqliteTest, TransactionRollsBackOnDestruction) {
  Database db = OpenDb();
  ASSERT_TRUE(db.Migrate(kMigrations).ok());
  {
    auto tx = Transaction::Begin(db);
    ASSERT_TRUE(tx.has_value()) << tx.error().ToString();
    ASSERT_TRUE(db.Exec("INSERT INTO things (name) VALUES ('rolled-back')").ok());
    EXPECT_EQ(Count(db, "things"), 1);
  }  // no Commit()
  EXPECT_EQ(Count(db, "things"), 0);

  {
    auto tx = Transaction::Begin(db);
    ASSERT_TRUE(tx.has_value());
    ASSERT_TRUE(db.Exec("INSERT INTO things (name) VALUES ('kept')").ok());
    ASSERT_TRUE(tx->Commit().ok());
  }
  EXPECT_EQ(Count(db, "things"), 1);

  // A moved-from transaction does not roll back twice; the moved-to one does.
  {
    auto tx = Transaction::Begin(db);
    ASSERT_TRUE(tx.has_value());
    Transaction moved(std::move(*tx));
    ASSERT_TRUE(db.Exec("INSERT INTO things (name) VALUES ('also-rolled-back')").ok());
  }
  EXPECT_EQ(Count(db, "things"), 1);

  // A new transaction can start: nothing was left open.
  auto tx = Transaction::Begin(db);
  ASSERT_TRUE(tx.has_value()) << tx.error().ToString();
}

TEST_F(SqliteTest, CommittedDataSurvivesReopen) {
  {
    Database db = OpenDb();
    ASSERT_TRUE(db.Migrate(kMigrations).ok());
    auto tx = Transaction::Begin(db);
    ASSERT_TRUE(tx.has_value());
    ASSERT_TRUE(db.Exec("INSERT INTO things (name) VALUES ('persisted')").ok());
    ASSERT_TRUE(tx->Commit().ok());
  }
  Database db = OpenDb();
  EXPECT_EQ(*db.SchemaVersion(), 3);
  EXPECT_EQ(Count(db, "things"), 1);
}

TEST_F(SqliteTest, NotADatabaseIsDataLoss) {
  {
    FILE* f = std::fopen(path_.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    std::string junk(4096, 'J');
    std::fwrite(junk.data(), 1, junk.size(), f);
    std::fclose(f);
  }
  auto db = Database::Open(path_);
  ASSERT_FALSE(db.has_value());
  EXPECT_EQ(db.error().code(), Code::kDataLoss) << db.error().ToString();
}

}  // namespace
}  // namespace certfleet::shared
