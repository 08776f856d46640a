//! The product on sale (docs/requirements.md#10-operating-sales, OP-12..OP-15), as every store
//! keeps it: the description and price with the sale, the image's bytes apart, the sale
//! showing an image only once a change sets it, and all of it across a restart.

use crate::StoreUnderTest;
use crate::conformance::{active, new_sale};
use crate::durability::restart;
use bytes::Bytes;
use flashsale_core::{ChangeRefusal, ImageEdit, ImageRef, Product, SaleChange, SaleEdit, SaleId};
use flashsale_store::{ChangeOutcome, SaleStore};
use time::Duration;

/// The smallest PNG header the sniffer accepts, of a size given by `seed` (one image per seed).
fn png(seed: u8) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    b.extend_from_slice(&[0, 0, 0, seed.max(1), 0, 0, 0, 1, 8, 6, 0, 0, 0, 0, 0, 0, 0]);
    b
}

fn set_image(image: ImageRef) -> SaleChange {
    SaleChange::Edit(SaleEdit {
        image: Some(ImageEdit::Set(image)),
        ..SaleEdit::default()
    })
}

async fn product_of(store: &dyn SaleStore, id: SaleId) -> Product {
    store
        .status(id)
        .await
        .unwrap()
        .unwrap()
        .sale
        .product
        .clone()
}

/// OP-12..OP-15 in one store: created with a description and price; an image kept, shown once
/// set, served back byte for byte; refused once active; all of it after a restart.
pub async fn a_product_and_its_image_are_kept_changed_by_the_rules_and_survive_a_restart<
    S: StoreUnderTest,
>(
    sut: S,
) {
    let store = sut.open().await;
    let described =
        Product::parse(Some("Solid walnut.\nSeats one."), Some(12_900), Some("EUR")).unwrap();
    let upcoming = new_sale(Duration::hours(1), Duration::hours(1), 5, 1).with_product(described);
    let sale = store.create_sale(upcoming.clone()).await.unwrap();
    assert!(upcoming.describes(&sale));
    assert_eq!(product_of(&*store, sale.id).await, upcoming.product);

    let bytes = png(7);
    let image = ImageRef::of(&bytes).unwrap();
    store
        .put_image(sale.id, image, Bytes::from(bytes.clone()))
        .await
        .unwrap();
    // Kept twice is kept once; kept is not yet shown.
    store
        .put_image(sale.id, image, Bytes::from(bytes.clone()))
        .await
        .unwrap();
    assert_eq!(product_of(&*store, sale.id).await.image, None);
    let ChangeOutcome::Changed(status) =
        store.change_sale(sale.id, set_image(image)).await.unwrap()
    else {
        panic!("an upcoming sale's image may change");
    };
    assert_eq!(status.sale.product.image, Some(image));
    assert_eq!(
        store.image(sale.id, image).await.unwrap().as_deref(),
        Some(&bytes[..])
    );
    let never_kept = ImageRef::of(&png(9)).unwrap();
    assert_eq!(store.image(sale.id, never_kept).await.unwrap(), None);

    let started = store
        .create_sale(active(5, 1).with_product(Product::parse(Some("Blue"), None, None).unwrap()))
        .await
        .unwrap();
    let refused = store
        .change_sale(started.id, set_image(image))
        .await
        .unwrap();
    assert!(
        matches!(refused, ChangeOutcome::Refused(ChangeRefusal::Started(_))),
        "{refused:?}"
    );

    let store = restart(&sut, store).await;
    let kept = product_of(&*store, sale.id).await;
    assert_eq!(
        kept.description.as_deref(),
        Some("Solid walnut.\nSeats one.")
    );
    assert_eq!(kept.price, upcoming.product.price);
    assert_eq!(kept.image, Some(image));
    assert_eq!(
        store.image(sale.id, image).await.unwrap().as_deref(),
        Some(&bytes[..])
    );
    assert_eq!(product_of(&*store, started.id).await.image, None);
    store.shutdown().await;
}
