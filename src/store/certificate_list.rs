//! The certificate list and search over clm_secure's `certificates`, built
//! to stay fast with millions of rows:
//! - a page is chosen by ids alone, so the ordered index range is walked
//!   (and OFFSET skipped) without reading a row; only the page's own rows
//!   are then read, and only the columns a listing shows;
//! - `total` counts at most [`COUNT_HORIZON`] matches past the page's start:
//!   counting a million matches exactly would cost more than the page;
//! - `q=` matches a subject by substring, through the trigram index of
//!   migration m20261206_000002_certificate_search (FTS5 on SQLite, pg_trgm
//!   on PostgreSQL), case-insensitively on both backends, or a serial by
//!   its beginning, through a plain index on `serial_hex`.

use sea_orm::sea_query::extension::postgres::PgExpr;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, LikeExpr, Query, SelectStatement, SimpleExpr};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, EntityTrait, FromQueryResult, IdenStatic,
    QueryFilter, QueryOrder, QuerySelect, QueryTrait, Select,
};

use super::entity::secure::certificates;
use super::{
    CertificateFilter, CertificateOrder, Page, SecureDb, StoreResult, parse_one, strings_from_json,
};
use crate::domain::model::CertificateBrief;
use crate::domain::{CaId, CertificateId, OrganizationId, ProfileId};

/// How far past the start of the requested page matches are counted.
pub const COUNT_HORIZON: u64 = 10_000;

/// How many certificates matched: exact, or at least `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Total {
    pub count: u64,
    pub exact: bool,
}

/// The trigram index cannot answer a shorter substring; those fall back to
/// a scan.
const TRIGRAM: usize = 3;

/// SQLite's subject index, an FTS5 table.
const SEARCH_TABLE: &str = "certificate_search";

#[derive(FromQueryResult)]
struct Row {
    id: uuid::Uuid,
    serial_hex: String,
    subject: String,
    sans: serde_json::Value,
    not_before: chrono::DateTime<chrono::Utc>,
    not_after: chrono::DateTime<chrono::Utc>,
    status: String,
    ca_id: uuid::Uuid,
    profile_id: Option<uuid::Uuid>,
}

/// What `q=` looks for.
struct Search<'a> {
    /// A substring of the subject, any case.
    subject: &'a str,
    /// The beginning of a serial: `q` in lower case without colons, when
    /// that leaves only hex digits.
    serial: Option<String>,
}

impl<'a> Search<'a> {
    fn new(text: &'a str) -> Self {
        let hex: String = text
            .chars()
            .filter(|&c| c != ':')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let serial = (!hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex);
        Search {
            subject: text,
            serial,
        }
    }

    /// Long enough for the trigram index.
    fn indexed(&self) -> bool {
        self.subject.chars().count() >= TRIGRAM
    }
}

impl SecureDb {
    /// A page of end-entity certificates in `filter.order`, with its total.
    pub async fn list_certificates(
        &self,
        scope: Option<OrganizationId>,
        filter: &CertificateFilter,
        page: Page,
    ) -> StoreResult<(Vec<CertificateBrief>, Total)> {
        let matching = matching(self.read.get_database_backend(), scope, filter);
        let ids = ordered(matching.clone().select_only(), filter.order)
            .column(certificates::Column::Id)
            .offset(page.offset())
            .limit(page.per_page)
            .into_query();
        let rows = ordered(certificates::Entity::find().select_only(), filter.order)
            .columns([
                certificates::Column::Id,
                certificates::Column::SerialHex,
                certificates::Column::Subject,
                certificates::Column::Sans,
                certificates::Column::NotBefore,
                certificates::Column::NotAfter,
                certificates::Column::Status,
                certificates::Column::CaId,
                certificates::Column::ProfileId,
            ])
            .filter(certificates::Column::Id.in_subquery(ids))
            .into_model::<Row>()
            .all(&self.read);
        let limit = page.offset().saturating_add(COUNT_HORIZON);
        let (rows, counted) = tokio::try_join!(rows, self.count_up_to(matching, limit + 1))?;
        let total = Total {
            count: Ord::min(counted, limit),
            exact: counted <= limit,
        };
        let items = rows.into_iter().map(brief).collect::<StoreResult<_>>()?;
        Ok((items, total))
    }

    /// `SELECT COUNT(*) FROM (… LIMIT n)`: stops after `n` matches.
    async fn count_up_to(
        &self,
        matching: Select<certificates::Entity>,
        n: u64,
    ) -> Result<u64, sea_orm::DbErr> {
        let inner: SelectStatement = matching
            .select_only()
            .expr(Expr::val(1))
            .limit(n)
            .into_query();
        let count = Query::select()
            .expr_as(Expr::cust("COUNT(*)"), Alias::new("n"))
            .from_subquery(inner, Alias::new("m"))
            .to_owned();
        let row = self.read.query_one(&count).await?;
        let n: i64 = match row {
            Some(r) => r.try_get("", "n")?,
            None => 0,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// `q` in the list's order; the id breaks ties, so pages never overlap.
fn ordered(
    q: Select<certificates::Entity>,
    order: CertificateOrder,
) -> Select<certificates::Entity> {
    match order {
        CertificateOrder::Newest => q
            .order_by_desc(certificates::Column::CreatedAt)
            .order_by_desc(certificates::Column::Id),
        CertificateOrder::SoonestExpiry => q
            .order_by_asc(certificates::Column::NotAfter)
            .order_by_asc(certificates::Column::Id),
    }
}

/// The end-entity certificates `scope` may see that pass `filter`.
fn matching(
    backend: DatabaseBackend,
    scope: Option<OrganizationId>,
    filter: &CertificateFilter,
) -> Select<certificates::Entity> {
    let search = filter.text.as_deref().map(Search::new);
    // With an FTS5 search the other filters are written `+column`, which
    // SQLite may not use an index for: otherwise, without statistics, it
    // walks a whole index range (a million `is_ca = false` entries)
    // probing the search's few ids, where looking those ids up is the
    // plan wanted whatever the data. clm keeps no SQLite statistics:
    // connections load them once, so statistics gathered on a young
    // database would mislead every long-lived connection later.
    let fts = backend == DatabaseBackend::Sqlite && search.as_ref().is_some_and(Search::indexed);
    let col = |c: certificates::Column| {
        if fts {
            Expr::cust(format!("+\"certificates\".\"{}\"", c.as_str()))
        } else {
            Expr::col((certificates::Entity, c))
        }
    };
    let mut q = certificates::Entity::find().filter(col(certificates::Column::IsCa).eq(false));
    if let Some(org) = scope {
        q = q.filter(col(certificates::Column::OrganizationId).eq(org.0));
    }
    if let Some(status) = filter.status {
        q = q.filter(col(certificates::Column::Status).eq(status.as_str()));
    }
    if let Some(ca) = filter.ca_id {
        q = q.filter(col(certificates::Column::CaId).eq(ca.0));
    }
    if let Some(before) = filter.not_after_before {
        q = q.filter(col(certificates::Column::NotAfter).lte(before));
    }
    if let Some(after) = filter.not_after_after {
        q = q.filter(col(certificates::Column::NotAfter).gt(after));
    }
    if let Some(search) = search {
        q = q.filter(matches(backend, &search));
    }
    q
}

/// The subject contains the search's text, ignoring case, or the serial
/// begins with it.
fn matches(backend: DatabaseBackend, search: &Search) -> SimpleExpr {
    let pattern = format!("%{}%", escape_like(search.subject));
    let subject = match backend {
        DatabaseBackend::Postgres => Expr::col(certificates::Column::Subject).ilike(pattern),
        _ if search.indexed() => Expr::col((certificates::Entity, certificates::Column::Id))
            .in_subquery(
                Query::select()
                    .column(Alias::new("id"))
                    .from(Alias::new(SEARCH_TABLE))
                    .and_where(Expr::cust_with_values(
                        format!("{SEARCH_TABLE} MATCH ?"),
                        [fts_phrase(search.subject)],
                    ))
                    .to_owned(),
            ),
        // SQLite's LIKE ignores ASCII case, as the trigram index does;
        // backslash is PostgreSQL's default escape, SQLite has none.
        _ => certificates::Column::Subject.like(LikeExpr::new(pattern).escape('\\')),
    };
    match &search.serial {
        // Serials are lower-case hex: those beginning with `p` are the
        // range [p, p + "g"), which the index on `serial_hex` serves.
        Some(p) => subject.or(certificates::Column::SerialHex
            .gte(p.as_str())
            .and(certificates::Column::SerialHex.lt(format!("{p}g")))),
        None => subject,
    }
}

/// LIKE's wildcards and its escape character, taken literally.
fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One FTS5 phrase: inside double quotes every character is literal but
/// the quote itself, which is doubled.
fn fts_phrase(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

fn brief(r: Row) -> StoreResult<CertificateBrief> {
    Ok(CertificateBrief {
        id: CertificateId(r.id),
        serial_hex: r.serial_hex,
        subject: r.subject,
        sans: strings_from_json(&r.sans)?,
        not_before: r.not_before,
        not_after: r.not_after,
        status: parse_one(&r.status)?,
        ca_id: CaId(r.ca_id),
        profile_id: r.profile_id.map(ProfileId),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_wildcards_are_literal() {
        assert_eq!(escape_like(r"a_b%c\d"), r"a\_b\%c\\d");
        assert_eq!(escape_like("plain.example"), "plain.example");
    }

    #[test]
    fn a_search_looks_for_a_serial_only_when_it_is_hex() {
        let serial = |q| Search::new(q).serial;
        assert_eq!(serial("4A:1b:00").as_deref(), Some("4a1b00"));
        assert_eq!(serial("cafe").as_deref(), Some("cafe"));
        for q in ["team-07.", "4a 1b", ":", "0x4a", "é1"] {
            assert_eq!(serial(q), None, "{q}");
        }
        assert_eq!(Search::new("4A:1b").subject, "4A:1b");
    }

    #[test]
    fn fts_phrases_quote_their_quotes() {
        assert_eq!(fts_phrase("team-07."), "\"team-07.\"");
        assert_eq!(fts_phrase(r#"O="x" AND y"#), r#""O=""x"" AND y""#);
    }
}
