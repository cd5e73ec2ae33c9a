% rebase('admin/base.tpl', title='Catalog', section='/admin/catalog')
<div class="page-head">
  <h1>Catalog</h1>
  <p class="toolbar"><a class="button" href="/admin/products/new">New product</a> <a class="button secondary" href="/admin/import">Import a catalog file</a></p>
</div>
% include('admin/_rule_notice.tpl')

<section class="card catalog-products" id="products" aria-labelledby="products-title">
  <div class="card-head">
    <h2 id="products-title">Products</h2>
    <span class="muted">{{len(products)}} product{{"s" if len(products) != 1 else ""}}</span>
  </div>
  <p id="catalog-status" class="status-line" role="status"></p>
  % if products:
  <table class="rows products">
    <thead><tr><th>Product</th><th class="num">Price</th><th class="num">In Stars</th><th>Kind</th><th>Ways to pay</th><th>In stock</th><th>Status</th><th><span class="visually-hidden">Actions</span></th></tr></thead>
    <tbody>
    % for p in products:
    % include('admin/_product_row.tpl', p=p, places=stock.get(p['id'], []), editing=False, error=None, oob=False, focus=False)
    % end
    </tbody>
  </table>
  % else:
  <p class="muted">No products yet.</p>
  % end
</section>

% include('admin/_places.tpl')

% include('admin/_telegram_rule.tpl')
<script src="/static/admin/catalog.js" defer></script>
