% rebase('admin/base.tpl', title='Catalog', section='/admin/catalog')
<h1>Catalog</h1>
<p><a class="button" href="/admin/products/new">New product</a> <a class="button secondary" href="/admin/import">Import a catalog file</a></p>
% to_fix = report["breaking"] or report["unsaid"]
% if to_fix:
% include('admin/_telegram_rule.tpl')
% end

<section class="card">
  <h2>Places</h2>
  <form method="post" action="/admin/cities" class="inline">
    % include('admin/_csrf.tpl')
    <label>New city <input name="name" required maxlength="64"></label>
    <button type="submit">Add city</button>
  </form>
  % if cities:
  <form method="post" action="/admin/districts" class="inline">
    % include('admin/_csrf.tpl')
    <label>New district in <select name="city_id">
      % for c in cities:
      <option value="{{c['id']}}">{{c["name"]}}</option>
      % end
    </select></label>
    <label>named <input name="name" required maxlength="64"></label>
    <button type="submit">Add district</button>
  </form>
  % end
  <table class="places">
    <tbody>
    % for c in cities:
      % include('admin/_place.tpl', kind='city', place=c)
      % for d in [d for d in districts if d['city_id'] == c['id']]:
        % include('admin/_place.tpl', kind='district', place=d)
      % end
    % end
    </tbody>
  </table>
</section>

<section class="card">
  <h2>Products</h2>
  % if products:
  <table class="rows">
    <thead><tr><th>Name</th><th class="num">Price</th><th class="num">In Stars</th><th>Kind</th><th class="num">Available</th><th>Ways to pay</th><th>Status</th></tr></thead>
    <tbody>
    % for p in products:
    <tr><td class="key"><a href="/admin/products/{{p['id']}}">{{p["name"]}}</a></td><td data-label="Price" class="num">{{fmt(p["price_cents"])}}</td>
        <td data-label="In Stars" class="num">{{stars(stars_of(p, rate))}}<span class="sub">{{"its own price" if p["stars_price"] else "at the rate"}}</span></td>
        <td data-label="Kind">{{p["kind"] or "not said yet"}}</td><td data-label="Available" class="num">{{p["available"]}}</td>
        <td data-label="Ways to pay" class="wide">{{ways_of(p, rule_on)}}</td><td data-label="Status" class="aside">{{"on sale" if p["is_active"] else "hidden"}}</td></tr>
    % end
    </tbody>
  </table>
  % else:
  <p class="muted">No products yet.</p>
  % end
</section>
% if not to_fix:
% include('admin/_telegram_rule.tpl')
% end
