//! Where the operator's counters are stored: `sale_counters` in both stores has `attempts`
//! and one column per counted outcome ([`Outcome::COUNTED`]), named by its wire code. Every
//! counter query takes its column list from here, so a new counted outcome needs only its
//! column added to both schemas (the tests below fail until it is).
//!
//! Columns, not `(sale, code, n)` rows: the existing data and queries stay as they are (no
//! data migration), and a flush stays one row per sale.

use flashsale_core::Outcome;

/// The counter columns, in [`Outcome::COUNTED`] order.
pub(crate) fn names() -> impl Iterator<Item = &'static str> {
    Outcome::COUNTED.into_iter().map(Outcome::code)
}

/// The counter columns, each written by `each` and joined with `", "`.
pub(crate) fn list(each: impl Fn(&str) -> String) -> String {
    names().map(each).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The columns of `CREATE TABLE IF NOT EXISTS sale_counters (...)` in `sql`, plus any
    /// `ALTER TABLE sale_counters ADD COLUMN` after it.
    fn columns_in(sql: &str) -> Vec<String> {
        let start = sql
            .find("CREATE TABLE IF NOT EXISTS sale_counters (")
            .expect("the schema creates sale_counters");
        let body = &sql[start..];
        let body = &body[body.find('(').unwrap() + 1..body.find(");").unwrap()];
        let mut columns: Vec<String> = body
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        for part in sql.split("ALTER TABLE sale_counters ADD COLUMN").skip(1) {
            let name = part
                .split_whitespace()
                .find(|w| !matches!(*w, "IF" | "NOT" | "EXISTS"));
            columns.extend(name.map(str::to_owned));
        }
        columns
    }

    #[test]
    fn every_counted_outcome_has_its_column_in_the_postgresql_schema() {
        let sql: String = crate::redis_pg::schema::MIGRATIONS
            .iter()
            .map(|(_, sql)| *sql)
            .collect();
        let columns = columns_in(&sql);
        for name in names() {
            assert!(
                columns.iter().any(|c| c == name),
                "sale_counters has no column {name} in crates/flashsale-store/migrations/: add a migration"
            );
        }
    }

    #[test]
    fn every_counted_outcome_has_its_column_in_the_sqlite_schema() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::embedded::schema::migrate(&conn).unwrap();
        let mut stmt = conn
            .prepare("SELECT name FROM pragma_table_info('sale_counters')")
            .unwrap();
        let columns: Vec<String> = stmt
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for name in names() {
            assert!(
                columns.iter().any(|c| c == name),
                "sale_counters has no column {name} in embedded/schema.rs: add it (add_column)"
            );
        }
    }

    #[test]
    fn column_lists_follow_the_counted_outcomes() {
        assert_eq!(
            list(|c| format!("c.{c}")),
            "c.sale_not_active, c.sold_out, c.already_purchased, c.limit_exceeded, \
             c.insufficient_stock, c.unavailable"
        );
    }
}
