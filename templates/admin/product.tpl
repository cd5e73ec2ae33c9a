% rebase('admin/base.tpl', title=product['name'] if product else 'New product', section='/admin/catalog')
<p><a href="/admin/catalog">← Catalog</a></p>
<h1>{{product["name"] if product else "New product"}}</h1>
<form method="post" action="/admin/products{{'/%d' % product['id'] if product else ''}}" enctype="multipart/form-data" class="card form">
  % include('admin/_csrf.tpl')
  % if error:
  <p class="flash bad" role="alert">⚠️ {{error}}</p>
  % end
  <label>Name <input name="name" required maxlength="64" value="{{values['name']}}"></label>
  <label>Description <textarea name="description" rows="4" maxlength="800">{{values["description"]}}</textarea></label>
  <label>Price in EUR <input name="price" required inputmode="decimal" value="{{values['price']}}" placeholder="25.00"></label>
  <label>Photo (JPEG, PNG, GIF or WebP, up to 10 MB) <input type="file" name="photo" accept="image/jpeg,image/png,image/gif,image/webp"></label>
  % if product and product["photo"]:
  <img class="thumb" src="/media/{{product['photo']}}" alt="Current photo">
  % end
  <label class="check"><input type="checkbox" name="active" value="1" {{'checked' if values['active'] else ''}}> On sale</label>
  <button type="submit">Save</button>
</form>

% if product:
<section class="card">
  <h2>Stock</h2>
  <table class="rows cols3">
    <thead><tr><th>Place</th><th class="num">Available</th><th class="num">Reserved</th><th class="num">Sold</th></tr></thead>
    <tbody>
    % for row in stock:
    <tr><td class="key">{{row["city"]}} / {{row["name"]}}</td><td data-label="Available" class="num">{{row["available"] or 0}}</td><td data-label="Reserved" class="num">{{row["reserved"] or 0}}</td><td data-label="Sold" class="num">{{row["sold"] or 0}}</td></tr>
    % end
    </tbody>
  </table>
  % if stock:
  <form method="post" action="/admin/products/{{product['id']}}/units" enctype="multipart/form-data" class="form">
    % include('admin/_csrf.tpl')
    <label>Add units in <select name="district_id">
      % for row in stock:
      <option value="{{row['id']}}">{{row["city"]}} / {{row["name"]}}</option>
      % end
    </select></label>
    <label>Contents: one unit per line, or blocks separated by a blank line
      <textarea name="units" rows="6" required placeholder="CODE-1234&#10;CODE-5678"></textarea></label>
    <label>Photo delivered with each of these units (optional) <input type="file" name="media" accept="image/jpeg,image/png,image/gif,image/webp"></label>
    <button type="submit">Add units</button>
  </form>
  % else:
  <p class="muted">Add a city and a district first.</p>
  % end
</section>
<section class="card">
  <h2>Units</h2>
  % if units:
  <table class="rows">
    <thead><tr><th>Unit</th><th>Place</th><th>Content</th><th>Status</th><th></th></tr></thead>
    <tbody>
    % for u in units:
    <tr><td class="key" data-label="Unit">{{u["id"]}}</td><td data-label="Place">{{u["city"]}} / {{u["district"]}}</td><td data-label="Content" class="content wide">{{u["content"]}}{{" 📷" if u["media"] else ""}}</td>
      <td data-label="Status">{{u["status"]}}{{(" · order #%d" % u["order_id"]) if u["order_id"] else ""}}</td>
      <td>
      % if u["status"] == "available":
        <button type="button" class="small danger" hx-post="/admin/units/{{u['id']}}/delete" hx-confirm="Delete this unit?">Delete</button>
      % end
      </td></tr>
    % end
    </tbody>
  </table>
  % if more:
  <p><a class="button secondary" href="{{more}}">Older units →</a></p>
  % end
  % else:
  <p class="muted">No units yet.</p>
  % end
</section>
% end
